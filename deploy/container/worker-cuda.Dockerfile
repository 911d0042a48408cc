# mal-worker for NVIDIA GPUs: built against the CUDA LibTorch 2.x of PyTorch's PyPI wheel
# (deploy/build-torch2.sh), whose CUDA and cuDNN libraries come in the wheel; the host gives the
# driver (NVIDIA container toolkit, or the GPU operator on Kubernetes). docs/k8s.md:
#   git archive HEAD | docker build -f deploy/container/worker-cuda.Dockerfile -t mal/worker-cuda -
# nvcc is needed at build time only (CMake's CUDA checks of the wheel's TorchConfig). Not built in
# CI: this machine has no container runtime.
# The toolkit's CUDA major version must match the wheel's (python -c 'import torch;
# print(torch.version.cuda)'): pass both, e.g. --build-arg TORCH_SPEC="torch==2.9.*".
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04
ARG TORCH_SPEC=torch
FROM ${CUDA_IMAGE} AS cuda

FROM debian:bookworm AS build
ARG TORCH_SPEC
COPY --from=cuda /usr/local/cuda /usr/local/cuda
ENV PATH=/usr/local/cuda/bin:$PATH
WORKDIR /src
COPY . .
RUN bash deploy/setup.sh \
 && apt-get install -y --no-install-recommends python3-venv \
 && MAL_TORCH2_VENV=/opt/mal/venv MAL_TORCH2_BUILD_DIR=/build MAL_TORCH2_SPEC="$TORCH_SPEC" \
      MAL_CTEST_ARGS="-L unit -R Spec" \
      bash deploy/build-torch2.sh \
 && install -D /build/worker/mal-worker /out/usr/local/bin/mal-worker

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgrpc++1.51 \
      libprotobuf32 libabsl20220623 libsqlite3-0 libyaml-cpp0.7 libgoogle-glog0v6 libgflags2.2 \
      libssl3 libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 \
      libopencv-objdetect406 libopencv-videoio406 libsystemd0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/mal-worker mal \
 && install -d -o 10001 -g 10001 /var/lib/mal-worker
# The wheel's libtorch, libc10, CUDA runtime, cuDNN and NCCL (found through the binary's RPATH).
COPY --from=build /opt/mal/venv /opt/mal/venv
COPY --from=build /out/ /
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 7080
ENTRYPOINT ["/usr/local/bin/mal-worker"]
