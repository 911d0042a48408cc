#include "common/predict/predict.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <opencv2/videoio.hpp>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/image/face_tracker.h"
#include "common/predict/track_ids.h"
#include "common/util/csv.h"
#include "common/util/files.h"
#include "common/util/status_macros.h"

namespace mal::predict {

namespace {

namespace fs = std::filesystem;

const std::set<std::string> kImageExtensions = {".jpg", ".jpeg", ".png", ".bmp"};
const std::set<std::string> kVideoExtensions = {".mp4",  ".avi", ".mov", ".mkv",
                                                ".webm", ".m4v", ".mpg", ".mpeg"};

std::string Extension(const fs::path& p) { return absl::AsciiStrToLower(p.extension().string()); }

std::string AuName(int au) { return absl::StrFormat("AU%02d", au); }

// Collects images and frames into requests and writes each answer's rows.
class Batcher {
 public:
  Batcher(const PredictOptions& o, const Backend& backend, std::ostream& out, std::ostream& log)
      : o_(o), backend_(backend), out_(out), log_(log) {
    request_.set_model(o.model);
    request_.set_face_crop(o.face_crop);
    request_.set_min_face(o.min_face);
  }

  // An input that could not be read here (a video OpenCV cannot open, a file that cannot be read):
  // sent as an empty slot so that it has its row, with `message` and `code` as its result.
  absl::Status AddUnreadable(const std::string& name, absl::StatusCode code, std::string message) {
    return Enqueue(v1::ImageInput(), name, 0, 0, code, std::move(message));
  }

  absl::Status Add(v1::ImageInput input, const std::string& name, int64_t frame, double timestamp) {
    std::string local_error;
    if (o_.max_image_bytes > 0 &&
        static_cast<int64_t>(input.encoded().size()) > o_.max_image_bytes) {
      // Sent as an empty slot, so its row keeps its place; the message is ours.
      local_error = absl::StrFormat(
          "%s: %.1f MB, more than the %.1f MB one image may have in a request to mal-serve "
          "(re-encode it as JPEG, or use mal-worker predict, which reads it in-process)",
          name, static_cast<double>(input.encoded().size()) / 1e6,
          static_cast<double>(o_.max_image_bytes) / 1e6);
      input.clear_encoded();
    }
    return Enqueue(std::move(input), name, frame, timestamp, absl::StatusCode::kResourceExhausted,
                   std::move(local_error));
  }

  absl::Status Enqueue(v1::ImageInput input, const std::string& name, int64_t frame,
                       double timestamp, absl::StatusCode local_code, std::string local_error) {
    const int64_t size = static_cast<int64_t>(input.ByteSizeLong());
    if (request_.images_size() > 0 &&
        (request_.images_size() >= batch_ || bytes_ + size > o_.max_request_bytes)) {
      RETURN_IF_ERROR(Flush());
    }
    input.set_id(frame > 0 ? absl::StrCat(name, "#", frame) : name);
    *request_.add_images() = std::move(input);
    where_.push_back({name, frame, timestamp, local_code, std::move(local_error)});
    bytes_ += size;
    return absl::OkStatus();
  }

  absl::Status Flush() {
    if (request_.images_size() == 0) return absl::OkStatus();
    ASSIGN_OR_RETURN(v1::DetectActionUnitsResponse response, Send(request_));
    if (summary_.aus.empty()) {
      summary_.aus.assign(response.aus().begin(), response.aus().end());
      summary_.present.assign(summary_.aus.size(), 0);
      summary_.mean_probability.assign(summary_.aus.size(), 0);
      if (o_.format == "csv") out_ << CsvHeader(summary_.aus);
    }
    for (int i = 0; i < response.results_size() && i < static_cast<int>(where_.size()); ++i) {
      v1::ImageResult& r = *response.mutable_results(i);
      if (!where_[i].local_error.empty()) {
        r.clear_faces();
        r.set_code(static_cast<int>(where_[i].local_code));
        r.set_message(where_[i].local_error);
      }
      if (where_[i].frame > 0) TrackFaces(where_[i].name, r);
      ++summary_.images;
      if (r.code() != 0) {
        ++summary_.unreadable;
        log_ << "predict: " << r.message() << "\n";
      } else if (r.faces_size() == 0 && !r.message().empty()) {
        log_ << "predict: " << r.message() << "\n";  // read, but no face in it
      }
      for (const v1::FaceResult& f : r.faces()) {
        if (!f.success()) continue;
        ++summary_.faces;
        for (int a = 0; a < f.aus_size() && a < static_cast<int>(summary_.aus.size()); ++a) {
          summary_.present[a] += f.aus(a).present() ? 1 : 0;
          summary_.mean_probability[a] += f.aus(a).probability();
        }
      }
      if (o_.format == "csv") {
        out_ << CsvRows(where_[i].name, where_[i].frame, where_[i].timestamp, summary_.aus, r);
      } else {
        std::string json;
        google::protobuf::util::JsonPrintOptions p;
        p.preserve_proto_field_names = true;
        (void)google::protobuf::util::MessageToJsonString(r, &json, p);
        out_ << json << "\n";
      }
    }
    out_.flush();
    if (o_.progress) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      log_ << "\r" << summary_.images
           << (total_images_ > 0 ? absl::StrCat(" of ", total_images_) : "") << " images, "
           << summary_.faces << " faces, "
           << absl::StrFormat("%.1f images/s",
                              static_cast<double>(summary_.images) / std::max(seconds, 1e-9))
           << "   " << std::flush;
      progress_shown_ = true;
    }
    request_.clear_images();
    where_.clear();
    bytes_ = 0;
    return absl::OkStatus();
  }

  // The backend's answer to `request`. A request of several images refused with
  // ResourceExhausted (more images than mal-serve's --max-images, or the model out of memory) is
  // sent again in requests of half its size (recursively, if those are refused too), and so are the
  // requests after it: a --batch above the server's limit costs one refused request, not the run.
  absl::StatusOr<v1::DetectActionUnitsResponse> Send(const v1::DetectActionUnitsRequest& request) {
    absl::StatusOr<v1::DetectActionUnitsResponse> response = backend_(request);
    const int n = request.images_size();
    if (response.ok() || !absl::IsResourceExhausted(response.status()) || n < 2) return response;
    if (n / 2 < batch_) {
      batch_ = n / 2;
      log_ << "predict: " << response.status().message() << "; sending at most " << batch_
           << " images per request\n";
    }
    v1::DetectActionUnitsResponse answer;
    for (int start = 0; start < n;) {
      v1::DetectActionUnitsRequest part = request;
      part.clear_images();
      const int end = std::min(n, start + std::min(batch_, n / 2));
      for (int i = start; i < end; ++i) *part.add_images() = request.images(i);
      ASSIGN_OR_RETURN(v1::DetectActionUnitsResponse some, Send(part));
      if (start == 0) {
        answer = std::move(some);
      } else {
        for (v1::ImageResult& r : *some.mutable_results()) *answer.add_results() = std::move(r);
      }
      start = end;
    }
    return answer;
  }

  // Video and camera frames: face_id becomes the face's track id within its input (frames arrive
  // here in order), as in the streaming RPC.
  void TrackFaces(const std::string& input, v1::ImageResult& r) {
    if (input != tracked_input_) {
      tracker_ = image::FaceTracker();
      tracked_input_ = input;
    }
    AssignTrackIds(tracker_, r);
  }

  // How many images there are, when known ahead (no videos, no camera), for the progress line.
  void set_total_images(int64_t n) { total_images_ = n; }

  PredictSummary Finish() {
    if (progress_shown_) log_ << "\n";
    for (size_t a = 0; a < summary_.mean_probability.size(); ++a) {
      if (summary_.faces > 0) summary_.mean_probability[a] /= static_cast<double>(summary_.faces);
    }
    return summary_;
  }

 private:
  struct Where {
    std::string name;
    int64_t frame;
    double timestamp;
    // Set when the input was not sent (more than max_image_bytes, unreadable here): its result.
    absl::StatusCode local_code;
    std::string local_error;
  };
  const PredictOptions& o_;
  const Backend& backend_;
  std::ostream& out_;
  std::ostream& log_;
  v1::DetectActionUnitsRequest request_;
  std::vector<Where> where_;
  int64_t bytes_ = 0;
  int batch_ = std::max(o_.batch, 1);  // images per request; halved when the server refuses more
  PredictSummary summary_;
  image::FaceTracker tracker_;
  std::string tracked_input_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  int64_t total_images_ = 0;
  bool progress_shown_ = false;
};

// Frames of an opened capture, every N-th, until the end, max_frames or should_stop.
// `*read` counts the frames that came out of the capture.
absl::Status ReadFrames(cv::VideoCapture& capture, const std::string& name, bool live,
                        const PredictOptions& o, Batcher& batcher,
                        const std::function<bool()>& should_stop, int64_t* read) {
  const double fps = live ? 0 : capture.get(cv::CAP_PROP_FPS);
  const auto start = std::chrono::steady_clock::now();
  cv::Mat frame;
  for (int64_t n = 1; o.max_frames <= 0 || n <= o.max_frames; ++n) {
    if (should_stop && should_stop()) break;
    if (!capture.read(frame) || frame.empty()) break;
    ++*read;
    if ((n - 1) % std::max(1, o.every) != 0) continue;
    const double t =
        live ? std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
             : (fps > 0 ? static_cast<double>(n - 1) / fps : 0);
    if (frame.depth() != CV_8U || (frame.channels() != 1 && frame.channels() != 3)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": frame ", n, " is not 8-bit grey or BGR"));
    }
    cv::Mat packed = frame.isContinuous() ? frame : frame.clone();
    v1::ImageInput in;
    v1::RawFrame* raw = in.mutable_raw();
    raw->set_width(packed.cols);
    raw->set_height(packed.rows);
    raw->set_channels(packed.channels());
    raw->set_pixels(std::string(reinterpret_cast<const char*>(packed.data),
                                packed.total() * packed.elemSize()));
    RETURN_IF_ERROR(batcher.Add(std::move(in), name, n, t));
    if (live)
      RETURN_IF_ERROR(batcher.Flush());  // a camera: each frame's row as soon as it is known
  }
  return absl::OkStatus();
}

}  // namespace

std::string CsvHeader(const std::vector<int>& aus) {
  std::string h = "input,frame,face_id,timestamp,confidence,success,x,y,width,height";
  for (int au : aus) absl::StrAppend(&h, ",", AuName(au), "_p");
  for (int au : aus) absl::StrAppend(&h, ",", AuName(au), "_c");
  return h + "\n";
}

std::string CsvRows(const std::string& input, int64_t frame, double timestamp_s,
                    const std::vector<int>& aus, const v1::ImageResult& result) {
  const std::string head = absl::StrCat(CsvField(input), ",", std::max<int64_t>(frame, 1), ",");
  const std::string time = absl::StrFormat("%.3f", timestamp_s);
  std::string rows;
  if (result.faces_size() == 0) {  // unreadable or no face: one row saying so
    absl::StrAppend(&rows, head, "0,", time, ",0,0", std::string(4 + 2 * aus.size(), ','), "\n");
    return rows;
  }
  for (const v1::FaceResult& f : result.faces()) {
    absl::StrAppend(&rows, head, f.face_id(), ",", time,
                    absl::StrFormat(",%.3f,%d", f.confidence(), f.success() ? 1 : 0), ",",
                    f.box().x(), ",", f.box().y(), ",", f.box().width(), ",", f.box().height());
    for (size_t a = 0; a < aus.size(); ++a) {
      absl::StrAppend(&rows, ",",
                      static_cast<int>(a) < f.aus_size()
                          ? absl::StrFormat("%.4f", f.aus(a).probability())
                          : "");
    }
    for (size_t a = 0; a < aus.size(); ++a) {
      absl::StrAppend(&rows, ",",
                      static_cast<int>(a) < f.aus_size() ? (f.aus(a).present() ? "1" : "0") : "");
    }
    rows += "\n";
  }
  return rows;
}

absl::StatusOr<PredictSummary> RunPredict(const PredictOptions& o, const Backend& backend,
                                          std::ostream& out, std::ostream& log,
                                          const std::function<bool()>& should_stop) {
  if (o.format != "csv" && o.format != "json")
    return absl::InvalidArgumentError("format: csv or json");
  if (o.inputs.empty() && o.camera < 0)
    return absl::InvalidArgumentError("no inputs: give files, directories or a camera");
  // Every input is checked before the first request, so a typo does not end a long run halfway.
  std::vector<fs::path> files;
  for (const std::string& input : o.inputs) {
    std::error_code ec;
    const fs::path p(input);
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> found;
      int64_t not_files = 0;  // image names that are not regular files: links to nothing, pipes
      for (const fs::directory_entry& e : fs::directory_iterator(p, ec)) {
        if (!kImageExtensions.count(Extension(e.path()))) continue;
        if (e.is_regular_file(ec)) {
          found.push_back(e.path());
        } else if (!e.is_directory(ec)) {
          ++not_files;
        }
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) log << "predict: " << input << ": no .jpg, .jpeg, .png or .bmp files\n";
      if (not_files > 0) {
        log << "predict: " << input << ": " << not_files
            << " image name(s) that are not regular files (links to nothing, pipes) left out\n";
      }
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(p, ec)) {
      if (!fs::is_regular_file(p, ec)) {  // a pipe or a device would block the read
        return absl::InvalidArgumentError(absl::StrCat(input, ": not a regular file"));
      }
      const std::string ext = Extension(p);
      if (!kImageExtensions.count(ext) && !kVideoExtensions.count(ext)) {
        return absl::InvalidArgumentError(absl::StrCat(
            input,
            ": not an image (.jpg .jpeg .png .bmp) or a video (.mp4 .avi .mov .mkv .webm ...)"));
      }
      files.push_back(p);
    } else {
      return absl::NotFoundError(absl::StrCat(input, ": no such file or directory"));
    }
  }
  if (files.empty() && o.camera < 0) {
    std::vector<std::string> shown(o.inputs.begin(),
                                   o.inputs.begin() + std::min<size_t>(o.inputs.size(), 3));
    return absl::InvalidArgumentError(absl::StrCat("no image or video among the inputs (",
                                                   absl::StrJoin(shown, ", "),
                                                   o.inputs.size() > 3 ? ", ..." : "", ")"));
  }
  Batcher batcher(o, backend, out, log);
  const bool any_video = std::any_of(files.begin(), files.end(), [](const fs::path& p) {
    return kVideoExtensions.count(Extension(p)) > 0;
  });
  if (!any_video && o.camera < 0) batcher.set_total_images(static_cast<int64_t>(files.size()));
  for (const fs::path& p : files) {
    if (should_stop && should_stop()) break;
    if (kVideoExtensions.count(Extension(p))) {
      cv::VideoCapture capture(p.string());
      if (!capture.isOpened()) {  // a row that says so (the log line comes with the answer)
        RETURN_IF_ERROR(batcher.AddUnreadable(
            p.string(), absl::StatusCode::kDataLoss,
            absl::StrCat(p.string(),
                         ": OpenCV cannot open this video (not a video, or cut off "
                         "before its first frame)")));
        continue;
      }
      int64_t read = 0;
      RETURN_IF_ERROR(ReadFrames(capture, p.string(), false, o, batcher, should_stop, &read));
      if (read == 0 && !(should_stop && should_stop())) {
        RETURN_IF_ERROR(batcher.AddUnreadable(
            p.string(), absl::StatusCode::kDataLoss,
            absl::StrCat(p.string(), ": OpenCV opens this video but reads no frame from it")));
      }
      continue;
    }
    v1::ImageInput in;
    auto bytes = ReadFile(p.string());
    if (!bytes.ok()) {
      RETURN_IF_ERROR(batcher.AddUnreadable(p.string(), bytes.status().code(),
                                            std::string(bytes.status().message())));
      continue;
    }
    in.set_encoded(std::move(*bytes));  // decoded (and checked) by the backend
    RETURN_IF_ERROR(batcher.Add(std::move(in), p.string(), 0, 0));
  }
  if (o.camera >= 0 && !(should_stop && should_stop())) {
    cv::VideoCapture capture(o.camera);
    if (!capture.isOpened())
      return absl::NotFoundError(absl::StrCat("camera ", o.camera, ": OpenCV cannot open it"));
    int64_t read = 0;
    RETURN_IF_ERROR(ReadFrames(capture, absl::StrCat("camera:", o.camera), true, o, batcher,
                               should_stop, &read));
  }
  // Interrupted outside a camera: the rows would be thrown away (predict_command.cc), so the
  // images still queued are not sent.
  if (!(should_stop && should_stop()) || o.camera >= 0) RETURN_IF_ERROR(batcher.Flush());
  return batcher.Finish();
}

std::string FormatSummary(const PredictSummary& s) {
  std::string text =
      absl::StrCat(s.images, " image(s)",
                   s.unreadable > 0 ? absl::StrCat(", ", s.unreadable, " unreadable") : "", ", ",
                   s.faces, " face(s)\n");
  if (s.faces == 0) return text;
  absl::StrAppend(&text, "AU     present  mean p\n");
  for (size_t a = 0; a < s.aus.size(); ++a) {
    absl::StrAppend(&text, absl::StrFormat("%-6s %6.1f%%  %6.3f\n", AuName(s.aus[a]),
                                           100.0 * static_cast<double>(s.present[a]) /
                                               static_cast<double>(s.faces),
                                           s.mean_probability[a]));
  }
  return text;
}

}  // namespace mal::predict
