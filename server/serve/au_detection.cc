#include "server/serve/au_detection.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/image/image_file.h"
#include "common/util/status_macros.h"

namespace mal::serve {

namespace {

// limits.max_pixels for an image of width x height px (a raw frame's, an encoded image's header's
// or its decoded size).
absl::Status CheckPixels(const std::string& what, uint64_t width, uint64_t height,
                         const DetectLimits& limits) {
  if (width * height <= static_cast<uint64_t>(limits.max_pixels)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": ", width, "x", height, " px is over the limit of ", limits.max_pixels));
}

}  // namespace

absl::StatusOr<cv::Mat> ReadImageInput(const v1::ImageInput& in, const std::string& what,
                                       const DetectLimits& limits) {
  if (in.has_raw()) {
    const v1::RawFrame& r = in.raw();
    if (r.width() <= 0 || r.height() <= 0 || (r.channels() != 1 && r.channels() != 3)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": raw frame of ", r.width(), "x", r.height(), "x", r.channels(),
                       ": needs width, height > 0 and 1 or 3 channels"));
    }
    RETURN_IF_ERROR(CheckPixels(what, static_cast<uint64_t>(r.width()),
                                static_cast<uint64_t>(r.height()), limits));
    const size_t expected = static_cast<size_t>(r.width()) * r.height() * r.channels();
    if (r.pixels().size() != expected) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": raw frame has ", r.pixels().size(),
                                                     " bytes, ", r.width(), "x", r.height(), "x",
                                                     r.channels(), " needs ", expected));
    }
    cv::Mat view(r.height(), r.width(), r.channels() == 1 ? CV_8UC1 : CV_8UC3,
                 const_cast<char*>(r.pixels().data()));
    return view.clone();
  }
  if (in.encoded().empty())
    return absl::InvalidArgumentError(absl::StrCat(what, ": no image bytes"));
  // The server's limit before decoding, as the decoder's own (a 48 MP JPEG is not decoded only
  // to be refused).
  const image::DeclaredSize declared = image::DeclaredImageSize(in.encoded());
  RETURN_IF_ERROR(CheckPixels(what, declared.width, declared.height, limits));
  auto image = image::DecodeImageBytes(in.encoded(), what);
  if (!image.ok()) return image.status();
  RETURN_IF_ERROR(CheckPixels(what, static_cast<uint64_t>(image->cols),
                              static_cast<uint64_t>(image->rows), limits));
  return image;
}

absl::StatusOr<PreparedBatch> PrepareBatch(const v1::ModelMetadata& meta,
                                           const image::FaceDetector* detector,
                                           const v1::DetectActionUnitsRequest& request,
                                           const DetectLimits& limits) {
  if (request.images_size() > limits.max_images) {
    return absl::ResourceExhaustedError(
        absl::StrCat(request.images_size(), " images in one request: at most ", limits.max_images));
  }
  if (!request.face_crop() && detector == nullptr) {
    return absl::FailedPreconditionError("no face detector: send face crops (face_crop)");
  }
  PreparedBatch batch;
  v1::DetectActionUnitsResponse& response = batch.response;
  response.set_model(request.model());
  response.mutable_aus()->CopyFrom(meta.aus());
  for (int i = 0; i < request.images_size(); ++i) {
    const v1::ImageInput& in = request.images(i);
    v1::ImageResult* result = response.add_results();
    result->set_id(in.id());
    // The input's own name where it has one (its position in this request means nothing to a
    // client that splits its inputs into requests, or streams them one by one).
    const std::string what = in.id().empty() ? absl::StrCat("image ", i) : in.id();
    auto image = ReadImageInput(in, what, limits);
    if (!image.ok()) {
      result->set_code(static_cast<int>(absl::StatusCode::kInvalidArgument));
      result->set_message(std::string(image.status().message()));
      continue;
    }
    result->set_width(image->cols);
    result->set_height(image->rows);
    std::vector<image::DetectedFace> faces;
    if (request.face_crop()) {
      faces.push_back({cv::Rect(0, 0, image->cols, image->rows), 1.0f});
    } else {
      faces = detector->Detect(*image, request.min_face());
      if (faces.empty()) {
        result->set_message(absl::StrCat(what, ": no face found (frontal faces of at least ",
                                         request.min_face() > 0
                                             ? absl::StrCat(request.min_face(), " px")
                                             : std::string("a tenth of the shorter side"),
                                         "; send face crops with face_crop)"));
      }
      if (static_cast<int>(faces.size()) > limits.max_faces_per_image)
        faces.resize(limits.max_faces_per_image);
    }
    for (size_t f = 0; f < faces.size(); ++f) {
      v1::FaceResult* face = result->add_faces();
      face->set_face_id(static_cast<int>(f));
      face->mutable_box()->set_x(faces[f].box.x);
      face->mutable_box()->set_y(faces[f].box.y);
      face->mutable_box()->set_width(faces[f].box.width);
      face->mutable_box()->set_height(faces[f].box.height);
      face->set_confidence(faces[f].confidence);
      const cv::Rect crop =
          request.face_crop() ? faces[f].box : image::FaceCropBox(faces[f].box, image->size());
      batch.crops.push_back((*image)(crop));
      batch.owners.emplace_back(i, static_cast<int>(f));
    }
  }
  return batch;
}

void FinishBatch(PreparedBatch& batch, const v1::ModelMetadata& meta,
                 const std::vector<float>& probabilities) {
  const int a = meta.aus_size();
  for (size_t k = 0; k < batch.owners.size(); ++k) {
    v1::FaceResult* face = batch.response.mutable_results(batch.owners[k].first)
                               ->mutable_faces(batch.owners[k].second);
    face->set_success(true);
    for (int j = 0; j < a; ++j) {
      v1::AuPrediction* p = face->add_aus();
      const float prob = probabilities[k * static_cast<size_t>(a) + static_cast<size_t>(j)];
      p->set_au(meta.aus(j));
      p->set_probability(prob);
      p->set_present(prob >= meta.thresholds(j));
    }
  }
}

absl::StatusOr<v1::DetectActionUnitsResponse> DetectActionUnits(
    const engine::AuModel& model, const image::FaceDetector* detector,
    const v1::DetectActionUnitsRequest& request, const DetectLimits& limits) {
  ASSIGN_OR_RETURN(PreparedBatch batch, PrepareBatch(model.metadata(), detector, request, limits));
  if (batch.crops.empty()) return std::move(batch.response);
  ASSIGN_OR_RETURN(const std::vector<float> probabilities, model.Predict(batch.crops));
  FinishBatch(batch, model.metadata(), probabilities);
  return std::move(batch.response);
}

}  // namespace mal::serve
