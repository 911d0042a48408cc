#include "server/serve/open_inference.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/image/image_file.h"
#include "common/util/grpc_channel.h"
#include "common/util/grpc_status.h"
#include "common/util/status_macros.h"

namespace mal::serve {

namespace {

constexpr char kVersion[] = "1";
constexpr char kImages[] = "IMAGES";
constexpr char kPixels[] = "PIXELS";
constexpr char kProbabilities[] = "PROBABILITIES";

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

std::string Shape(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// BYTES elements of raw_input_contents: each a 4-byte little-endian length, then that many bytes.
absl::StatusOr<std::vector<std::string>> SplitRawBytes(const std::string& raw) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < raw.size()) {
    if (raw.size() - at < 4)
      return absl::InvalidArgumentError("raw BYTES contents end inside a length prefix");
    uint32_t n = 0;
    for (int b = 3; b >= 0; --b)
      n = (n << 8) | static_cast<unsigned char>(raw[at + static_cast<size_t>(b)]);
    at += 4;
    if (raw.size() - at < n)
      return absl::InvalidArgumentError("raw BYTES contents end inside an element");
    out.emplace_back(raw.substr(at, n));
    at += n;
  }
  return out;
}

}  // namespace

absl::StatusOr<OpenInferenceService::Found> OpenInferenceService::Find(const std::string& name,
                                                                       const std::string& version) {
  std::string model = name;
  if (!version.empty()) {
    if (!models_->versioned()) {
      // A model directory has one version.
      if (version != kVersion) {
        return absl::NotFoundError(
            absl::StrCat("model ", name, " has version ", kVersion, " only"));
      }
    } else if (name.find_first_of(":@") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model ", name, ": give the version in the name or in model_version, not both"));
    } else {
      model = absl::StrCat(name, ":", version);
    }
  }
  Found found;
  ASSIGN_OR_RETURN(found.batcher, models_->Get(model));
  ASSIGN_OR_RETURN(found.version, models_->Version(model));
  return found;
}

grpc::Status OpenInferenceService::ServerLive(grpc::ServerContext* context,
                                              const inference::ServerLiveRequest*,
                                              inference::ServerLiveResponse* response) {
  if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
  response->set_live(true);
  return grpc::Status::OK;
}

grpc::Status OpenInferenceService::ServerReady(grpc::ServerContext* context,
                                               const inference::ServerReadyRequest*,
                                               inference::ServerReadyResponse* response) {
  if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
  response->set_ready(true);
  return grpc::Status::OK;
}

grpc::Status OpenInferenceService::ModelReady(grpc::ServerContext* context,
                                              const inference::ModelReadyRequest* request,
                                              inference::ModelReadyResponse* response) {
  if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
  // Ready when it loads (an unknown or broken model is not ready; not an error, as in Triton).
  response->set_ready(Find(request->name(), request->version()).ok());
  return grpc::Status::OK;
}

grpc::Status OpenInferenceService::ServerMetadata(grpc::ServerContext* context,
                                                  const inference::ServerMetadataRequest*,
                                                  inference::ServerMetadataResponse* response) {
  if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
  response->set_name("mal-serve");
  response->set_version(kVersion);
  return grpc::Status::OK;
}

grpc::Status OpenInferenceService::ModelMetadata(grpc::ServerContext* context,
                                                 const inference::ModelMetadataRequest* request,
                                                 inference::ModelMetadataResponse* response) {
  if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
  auto model = Find(request->name(), request->version());
  if (!model.ok()) return ToGrpcStatus(model.status());
  const v1::ModelMetadata& meta = model->batcher->model().metadata();
  response->set_name(request->name());
  response->add_versions(model->version);
  response->set_platform("mal_libtorch");
  auto* images = response->add_inputs();
  images->set_name(kImages);
  images->set_datatype("BYTES");
  images->add_shape(-1);
  auto* pixels = response->add_inputs();
  pixels->set_name(kPixels);
  pixels->set_datatype("FP32");
  for (int64_t d : {int64_t{-1}, int64_t{3}, int64_t{meta.input()}, int64_t{meta.input()}})
    pixels->add_shape(d);
  auto* out = response->add_outputs();
  out->set_name(kProbabilities);
  out->set_datatype("FP32");
  out->add_shape(-1);
  out->add_shape(meta.aus_size());
  return grpc::Status::OK;
}

grpc::Status OpenInferenceService::ModelInfer(grpc::ServerContext* context,
                                              const inference::ModelInferRequest* request,
                                              inference::ModelInferResponse* response) {
  if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
  auto model = Find(request->model_name(), request->model_version());
  if (!model.ok()) return ToGrpcStatus(model.status());
  DynamicBatcher& batcher = *model->batcher;
  DynamicBatcher::Ticket ticket(&batcher);
  const v1::ModelMetadata& meta = batcher.model().metadata();
  if (request->inputs_size() != 1) {
    return Invalid(absl::StrCat(request->inputs_size(), " inputs: send one, ", kImages,
                                " (BYTES [N]) or ", kPixels, " (FP32 [N, 3, ", meta.input(), ", ",
                                meta.input(), "])"));
  }
  for (const auto& o : request->outputs()) {
    if (o.name() != kProbabilities)
      return Invalid(absl::StrCat("output ", o.name(), ": the output is ", kProbabilities));
  }
  const auto& in = request->inputs(0);
  // The input's name says what it holds, and its datatype must be that input's.
  const char* wanted = in.name() == kImages ? "BYTES" : in.name() == kPixels ? "FP32" : nullptr;
  if (wanted == nullptr) {
    return Invalid(absl::StrCat("input ", in.name(), ": the inputs are ", kImages,
                                " (BYTES [N]) and ", kPixels, " (FP32 [N, 3, ", meta.input(), ", ",
                                meta.input(), "])"));
  }
  if (in.datatype() != wanted) {
    return Invalid(
        absl::StrCat(in.name(), ": datatype ", in.datatype(), ", ", in.name(), " is ", wanted));
  }
  const bool raw = request->raw_input_contents_size() > 0;
  if (raw && request->raw_input_contents_size() != 1)
    return Invalid("raw_input_contents: one entry per input");
  absl::StatusOr<std::vector<float>> probabilities;
  int64_t n = 0;
  if (in.datatype() == "BYTES") {
    if (in.shape_size() < 1 || in.shape(0) < 0)
      return Invalid(absl::StrCat(in.name(), ": shape ", Shape(in.shape())));
    std::vector<std::string> elements;
    if (raw) {
      auto split = SplitRawBytes(request->raw_input_contents(0));
      if (!split.ok()) return Invalid(absl::StrCat(in.name(), ": ", split.status().message()));
      elements = std::move(*split);
    } else {
      elements.assign(in.contents().bytes_contents().begin(), in.contents().bytes_contents().end());
    }
    n = static_cast<int64_t>(elements.size());
    if (n != in.shape(0)) {
      return Invalid(
          absl::StrCat(in.name(), ": shape ", Shape(in.shape()), " but ", n, " elements"));
    }
    if (n > limits_.max_images) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat(n, " images in one request: at most ", limits_.max_images));
    }
    std::vector<cv::Mat> faces;
    for (int64_t i = 0; i < n; ++i) {
      v1::ImageInput element;  // the same reader and pixel limit as DetectActionUnits
      element.set_encoded(std::move(elements[static_cast<size_t>(i)]));
      auto image = ReadImageInput(element, absl::StrCat(in.name(), "[", i, "]"), limits_);
      if (!image.ok()) return Invalid(std::string(image.status().message()));
      faces.push_back(std::move(*image));
    }
    probabilities = batcher.Predict(faces);
  } else if (in.datatype() == "FP32") {
    const int64_t s = meta.input();
    if (in.shape_size() != 4 || in.shape(0) < 0 || in.shape(1) != 3 || in.shape(2) != s ||
        in.shape(3) != s) {
      return Invalid(absl::StrCat(in.name(), ": shape ", Shape(in.shape()),
                                  ", the model takes [N, 3, ", s, ", ", s, "]"));
    }
    n = in.shape(0);
    if (n > limits_.max_images) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat(n, " images in one request: at most ", limits_.max_images));
    }
    const size_t count = static_cast<size_t>(n * 3 * s * s);
    std::vector<float> data;
    if (raw) {
      const std::string& bytes = request->raw_input_contents(0);
      if (bytes.size() != count * sizeof(float)) {
        return Invalid(absl::StrCat(in.name(), ": ", bytes.size(), " raw bytes, shape ",
                                    Shape(in.shape()), " needs ", count * sizeof(float)));
      }
      data.resize(count);
      std::memcpy(data.data(), bytes.data(), bytes.size());  // little-endian, as this machine
    } else {
      data.assign(in.contents().fp32_contents().begin(), in.contents().fp32_contents().end());
      if (data.size() != count) {
        return Invalid(absl::StrCat(in.name(), ": ", data.size(), " values, shape ",
                                    Shape(in.shape()), " needs ", count));
      }
    }
    // NaN or infinity would come back as NaN probabilities with status OK.
    if (auto bad =
            std::find_if(data.begin(), data.end(), [](float v) { return !std::isfinite(v); });
        bad != data.end()) {
      return Invalid(absl::StrCat(in.name(), ": value ", bad - data.begin(), " is ", *bad,
                                  ": normalised pixels must be finite"));
    }
    probabilities = n == 0 ? std::vector<float>() : batcher.model().PredictNormalized(data);
  } else {
    return Invalid(absl::StrCat(in.name(), ": datatype ", in.datatype(), ": send ", kImages,
                                " as BYTES or ", kPixels, " as FP32"));
  }
  if (!probabilities.ok()) return ToGrpcStatus(probabilities.status());
  response->set_model_name(request->model_name());
  response->set_model_version(model->version);
  response->set_id(request->id());
  (*response->mutable_parameters())["aus"].set_string_param(absl::StrJoin(meta.aus(), ","));
  auto* out = response->add_outputs();
  out->set_name(kProbabilities);
  out->set_datatype("FP32");
  out->add_shape(n);
  out->add_shape(meta.aus_size());
  response->add_raw_output_contents(std::string(
      reinterpret_cast<const char*>(probabilities->data()), probabilities->size() * sizeof(float)));
  return grpc::Status::OK;
}

}  // namespace mal::serve
