#ifndef MAL_COMMON_PREDICT_PREDICT_H_
#define MAL_COMMON_PREDICT_PREDICT_H_

#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mal/v1/inference.pb.h"

namespace mal::predict {

// What `malctl predict` (over RPC) and `mal-worker predict` (in-process) run: inputs in, batches to
// a backend, one row per face out. No gRPC and no torch here: the backend is given.
struct PredictOptions {
  std::string model;  // the model's name (mal-serve) or directory (in-process)
  std::vector<std::string>
      inputs;          // image files, directories of images (sorted, not recursive), videos
  int camera = -1;     // >= 0: read frames from this camera (OpenCV's device index)
  int max_frames = 0;  // camera and videos: stop after this many frames read (0: no limit)
  int every = 1;       // videos and camera: every N-th frame
  int batch = 16;      // images per request
  int64_t max_request_bytes = 32 << 20;  // a request is sent before it grows past this
  // An encoded image larger than this (bytes; 0: no limit) is not sent: its row is an error
  // naming it (malctl: what one gRPC message to mal-serve may carry; mal-worker: none).
  int64_t max_image_bytes = 0;
  bool face_crop = false;      // the inputs are face crops: no detection
  int min_face = 0;            // px; 0: the server's default
  std::string format = "csv";  // csv (OpenFace-style) | json (one line per image)
  // A progress line on `log` after every request ("\r" rewritten: for a terminal): images done (of
  // how many, when there are no videos or camera to count), faces, images/s.
  bool progress = false;
};

using Backend = std::function<absl::StatusOr<v1::DetectActionUnitsResponse>(
    const v1::DetectActionUnitsRequest& request)>;

struct PredictSummary {
  int64_t images = 0;      // images and frames sent
  int64_t unreadable = 0;  // answered with an error in their slot (named on `log`)
  int64_t faces = 0;
  std::vector<int> aus;
  std::vector<int64_t> present;          // per AU: faces where it is present
  std::vector<double> mean_probability;  // per AU, over faces
};

// Lists the inputs (directories expanded to their .jpg/.jpeg/.png/.bmp files), reads them (image
// files as their bytes; video frames decoded with OpenCV and sent raw), sends them in batches to
// `backend`, and writes the rows to `out`: CSV with the header
//   input,frame,face_id,timestamp,confidence,success,x,y,width,height,AU01_p,...,AU01_c,...
// (OpenFace's columns where they exist; frame is 1-based, timestamp in s; an image with no face or
// that cannot be read is one row with success 0 and empty AU columns), or JSON lines. Problems with
// one input are named on `log` and the rest go on. `should_stop` (may be empty) ends a camera or
// video early. Errors: NotFound / InvalidArgument naming an input that does not exist or is not
// an image, directory or video; the backend's errors (the rows written so far stay written).
absl::StatusOr<PredictSummary> RunPredict(const PredictOptions& options, const Backend& backend,
                                          std::ostream& out, std::ostream& log,
                                          const std::function<bool()>& should_stop = {});

// The summary as text: faces, and per AU how often it was present and its mean probability.
std::string FormatSummary(const PredictSummary& summary);

// The CSV header and the rows of one image's result (the format of RunPredict).
std::string CsvHeader(const std::vector<int>& aus);
std::string CsvRows(const std::string& input, int64_t frame, double timestamp_s,
                    const std::vector<int>& aus, const v1::ImageResult& result);

}  // namespace mal::predict

#endif  // MAL_COMMON_PREDICT_PREDICT_H_
