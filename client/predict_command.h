#ifndef MAL_CLIENT_PREDICT_COMMAND_H_
#define MAL_CLIENT_PREDICT_COMMAND_H_

namespace CLI {
class App;
}

namespace mal::cli {

// Adds `predict` to malctl's command tree: AUs of the faces in images, folders, videos or a camera
// from a model on mal-serve (--address or MAL_SERVE_ADDRESS, default 127.0.0.1:7071; TLS and
// token options as the other service commands). Options and output:
// common/predict/predict_command.h.
void AddPredictCommand(CLI::App& app, int* exit_code);

}  // namespace mal::cli

#endif  // MAL_CLIENT_PREDICT_COMMAND_H_
