#include "client/predict_command.h"

#include <CLI/CLI.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/service_client.h"
#include "common/predict/predict_command.h"
#include "common/util/grpc_channel.h"
#include "common/util/grpc_status.h"
#include "mal/v1/inference.grpc.pb.h"

namespace mal::cli {

void AddPredictCommand(CLI::App& app, int* exit_code) {
  struct Options {
    ServiceOptions service;
    predict::PredictCommandOptions predict;
  };
  auto o = std::make_shared<Options>();
  o->service.address = "127.0.0.1:7071";
  CLI::App* cmd = app.add_subcommand(
      "predict", "AUs of the faces in images, folders, videos or a camera (mal-serve)");
  cmd->add_option("--model", o->predict.predict.model,
                  "the model on mal-serve: its directory's name under --model-dir, or with "
                  "--registry NAME, NAME:VERSION or NAME@ALIAS")
      ->required();
  predict::AddPredictOptions(*cmd, &o->predict);
  // One image must fit in one gRPC message with room for the request's other fields.
  o->predict.predict.max_image_bytes = rpc::kMaxMessageBytes - (1 << 20);
  AddServiceOptions(*cmd, &o->service, "MAL_SERVE_ADDRESS", /*output=*/false);
  cmd->footer(
      "Example: malctl predict --model bp4d-mal@champion photo.jpg faces/ clip.mp4 --out aus.csv");
  cmd->callback([o, exit_code] {
    auto channel_or = OpenChannel(o->service);
    if (!channel_or.ok()) {
      *exit_code = Fail(kUsage, std::string(channel_or.status().message()));
      return;
    }
    std::shared_ptr<grpc::Channel> channel = *std::move(channel_or);
    std::shared_ptr<v1::Inference::Stub> stub = v1::Inference::NewStub(channel);
    const std::string address = o->service.address;
    predict::Backend backend = [channel, stub, address](const v1::DetectActionUnitsRequest& request)
        -> absl::StatusOr<v1::DetectActionUnitsResponse> {
      v1::DetectActionUnitsResponse response;
      auto call = [&]() {
        grpc::ClientContext ctx;
        rpc::SetDeadline(ctx, std::chrono::minutes(5));
        response.Clear();
        return stub->DetectActionUnits(&ctx, request, &response);
      };
      grpc::Status s = call();
      // A connection attempt that timed out in the handshake (many clients starting at once on
      // a loaded host: each attempt may take 0.1 to 0.5 s, grpc_channel.cc) or a server
      // restarting: once more, after waiting up to 10 s for the channel to connect.
      if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
          channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
        s = call();
      }
      if (!s.ok()) {
        absl::Status status = FromGrpcStatus(s);
        return absl::Status(status.code(),
                            absl::StrCat("mal-serve at ", address, ": ", status.message()));
      }
      return response;
    };
    *exit_code = predict::RunPredictCommand(o->predict, backend, "malctl");
  });
}

}  // namespace mal::cli
