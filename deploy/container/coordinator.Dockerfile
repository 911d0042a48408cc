# mal-coordinator and malctl on Debian 12, built from a clean tree (docs/k8s.md):
#   git archive HEAD | docker build -f deploy/container/coordinator.Dockerfile -t mal/coordinator -
# (a `git archive` context carries no build directories or caches). Not built in CI: this machine
# has no container runtime.
FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN bash deploy/setup.sh \
 && cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMAL_BUILD_TESTS=OFF \
 && cmake --build /build --target mal-coordinator malctl \
 && install -D /build/server/mal-coordinator /out/usr/local/bin/mal-coordinator \
 && install -D /build/client/malctl /out/usr/local/bin/malctl

FROM debian:bookworm-slim
# The shared libraries the two binaries link (apt adds what those need).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgrpc++1.51 libprotobuf32 \
      libabsl20220623 libsqlite3-0 libyaml-cpp0.7 libgoogle-glog0v6 libgflags2.2 libssl3 \
      libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 libopencv-videoio406 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libsystemd0 gnuplot-nox \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/mal-coordinator mal \
 && install -d -o 10001 -g 10001 /var/lib/mal-coordinator
COPY --from=build /out/ /
USER 10001:10001
VOLUME /var/lib/mal-coordinator
EXPOSE 7070 7071 9470
ENTRYPOINT ["/usr/local/bin/mal-coordinator"]
# Off loopback the coordinator needs TLS (or --insecure): mount the certificate, key and role
# tokens where these flags look (docs/k8s.md), e.g.
#   docker run -v $PWD/tls:/etc/mal/tls:ro -v $PWD/tokens:/etc/mal/tokens:ro -p 7070:7070 mal/coordinator
CMD ["--listen=0.0.0.0:7070", "--data-dir=/var/lib/mal-coordinator", "--health-listen=0.0.0.0:7071", \
     "--metrics-listen=0.0.0.0:9470", "--tls-cert=/etc/mal/tls/tls.crt", \
     "--tls-key=/etc/mal/tls/tls.key", "--token-file=/etc/mal/tokens/tokens"]
