#ifndef MAL_COMMON_PREDICT_PREDICT_COMMAND_H_
#define MAL_COMMON_PREDICT_PREDICT_COMMAND_H_

#include <string>

#include "common/predict/predict.h"

namespace CLI {
class App;
}

namespace mal::predict {

// The options `malctl predict` (RPC) and `mal-worker predict` (in-process) share, added to
// `command`: the inputs, --camera, --frames, --every, --batch, --face-crop, --min-face,
// -o csv|json, --out FILE. The model option is each command's own.
struct PredictCommandOptions {
  PredictOptions predict;
  std::string out;  // empty: stdout
};
void AddPredictOptions(CLI::App& command, PredictCommandOptions* options);

// Runs RunPredict with `backend`, writing to --out (through a temporary file renamed at the end:
// no partial file on failure) or stdout, the summary to stderr; Ctrl-C ends a camera or video
// early and keeps what was written. Returns the exit code: 0; 1 when the backend failed (unknown
// model, server unreachable: its message is printed after "PROGRAM: "); 2 for an input that does
// not exist or is not an image, directory or video, or an --out that cannot be written.
int RunPredictCommand(const PredictCommandOptions& options, const Backend& backend,
                      const char* program);

}  // namespace mal::predict

#endif  // MAL_COMMON_PREDICT_PREDICT_COMMAND_H_
