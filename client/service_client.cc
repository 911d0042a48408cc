#include "client/service_client.h"

#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <ctime>
#include <iostream>

#include "absl/strings/str_cat.h"

namespace mal::cli {

const std::vector<std::string>& EventKinds() {
  static const std::vector<std::string> kinds = {"state",   "point",       "weights",      "epoch",
                                                 "restart", "fold_result", "trial_result", "end"};
  return kinds;
}

void AddServiceOptions(CLI::App& command, ServiceOptions* o, const char* address_env, bool output) {
  command.add_option("--address", o->address, "the server, HOST:PORT")->envname(address_env);
  if (output) {
    command.add_option("-o,--output", o->output, "table (or text), json or yaml")
        ->check(CLI::IsMember({"table", "text", "json", "yaml"}));
  }
  command.add_option("--tls-ca", o->security.ca_file, "CA bundle (PEM) for TLS to the server")
      ->envname("MAL_TLS_CA");
  command
      .add_option("--tls-cert", o->security.cert_file, "client certificate (PEM) for mutual TLS")
      ->envname("MAL_TLS_CERT");
  command.add_option("--tls-key", o->security.key_file, "client key (PEM) for mutual TLS")
      ->envname("MAL_TLS_KEY");
  command.add_option("--token-file", o->token_file,
                     "bearer token file (default: the MAL_TOKEN variable)");
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(ServiceOptions o) {
  auto token = rpc::LoadToken(o.token_file, "MAL_TOKEN");
  if (!token.ok()) return token.status();
  o.security.token = *token;
  // Fail here, naming the file, rather than at the first call.
  return rpc::MakeSecureChannel(o.address, o.security);
}

absl::StatusOr<ServiceClient> Connect(ServiceOptions o) {
  auto channel = OpenChannel(o);
  if (!channel.ok()) return channel.status();
  ServiceClient client;
  client.output = o.output == "text" ? "table" : o.output;
  client.json = o.output == "json";
  client.stub = v1::Coordinator::NewStub(*channel);
  client.registry = v1::ModelRegistry::NewStub(*channel);
  return client;
}

grpc::Status GetExperiment(const ServiceClient& c, const std::string& id,
                           v1::ExperimentInfo* info) {
  v1::GetExperimentRequest req;
  req.set_experiment_id(id);
  return Call(c.stub.get(), &v1::Coordinator::Stub::GetExperiment, req, info);
}

grpc::Status GetResults(const ServiceClient& c, const std::string& id,
                        v1::ResultsResponse* results) {
  v1::ResultsRequest req;
  req.set_experiment_id(id);
  return Call(c.stub.get(), &v1::Coordinator::Stub::GetResults, req, results);
}

int Fail(int code, const std::string& message) {
  std::cerr << "malctl: " << message << "\n";
  return code;
}

int RpcFail(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return Fail(kUnavailable, absl::StrCat("the server is unreachable: ", s.error_message(),
                                             " (set --address or MAL_ADDRESS)"));
    case grpc::StatusCode::PERMISSION_DENIED:  // a valid token without the role: names the role
      return Fail(kUnavailable, absl::StrCat(s.error_message(),
                                             " (give a token with that role: --token-file or "
                                             "MAL_TOKEN)"));
    case grpc::StatusCode::UNAUTHENTICATED:
      // The server's message may name the remedy already.
      return Fail(kUnavailable,
                  s.error_message().find("MAL_TOKEN") != std::string::npos
                      ? s.error_message()
                      : absl::StrCat(s.error_message(), " (set --token-file or MAL_TOKEN)"));
    default:
      return Fail(kFailed, s.error_message());
  }
}

std::string Name(v1::ExperimentState s) {
  std::string n = v1::ExperimentState_Name(s);
  return n.rfind("EXPERIMENT_", 0) == 0 ? n.substr(11) : n;
}

std::string Name(v1::RunState s) {
  std::string n = v1::RunState_Name(s);
  return n.rfind("RUN_", 0) == 0 ? n.substr(4) : n;
}

std::string Time(int64_t ms) {
  const time_t t = static_cast<time_t>(ms / 1000);
  char buf[32];
  std::tm tm;
  localtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

}  // namespace mal::cli
