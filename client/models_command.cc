// `malctl models`: the coordinator's model registry (proto/mal/v1/service.proto, ModelRegistry;
// docs/serving.md). A model reference is NAME (the newest version), NAME:VERSION or NAME@ALIAS.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/service_client.h"
#include "common/spec/model_metadata.h"
#include "common/util/artifact_transfer.h"
#include "common/util/files.h"
#include "common/util/run_files.h"
#include "google/protobuf/util/json_util.h"

namespace mal::cli {

namespace {

namespace fs = std::filesystem;

std::string Ref(const v1::ModelInfo& m) { return absl::StrCat(m.name(), ":", m.version()); }

// NAME:VERSION, then " (@alias, @other)" when it has aliases.
std::string RefWithAliases(const v1::ModelInfo& m) {
  return absl::StrCat(Ref(m), m.aliases().empty()
                                  ? ""
                                  : absl::StrCat(" (@", absl::StrJoin(m.aliases(), ", @"), ")"));
}

std::string Produced(const v1::ModelInfo& m) {
  return absl::StrCat(m.experiment_id(), " trial ", m.trial(), " ",
                      m.fold() == 0 ? "final fit" : absl::StrCat("fold ", m.fold()));
}

int PrintInfo(const ServiceClient& c, const v1::ModelInfo& m, const std::string& what) {
  if (c.structured()) {
    PrintStructured(c.output, m);
  } else {
    std::cout << what << RefWithAliases(m) << "\n";
  }
  return kOk;
}

int List(const ServiceClient& c, const std::string& name) {
  v1::ListRegisteredModelsRequest req;
  req.set_name(name);
  v1::ListRegisteredModelsResponse r;
  if (grpc::Status s =
          Call(c.registry.get(), &v1::ModelRegistry::Stub::ListRegisteredModels, req, &r);
      !s.ok())
    return RpcFail(s);
  if (c.structured()) {
    PrintStructured(c.output, r);
    return kOk;
  }
  if (r.models().empty()) {
    std::cout << (name.empty() ? "no models registered yet: a finished experiment registers its "
                                 "models"
                               : absl::StrCat("no versions of ", name))
              << "\n";
    return kOk;
  }
  std::cout << absl::StrFormat("%-28s %-18s %-9s %-32s %s\n", "MODEL", "ALIASES", "F1",
                               "PRODUCED BY", "CREATED");
  for (const v1::ModelInfo& m : r.models()) {
    std::cout << absl::StrFormat("%-28s %-18s %-9.4f %-32s %s\n", Ref(m),
                                 m.aliases().empty() ? "-" : absl::StrJoin(m.aliases(), ","),
                                 m.test_mean_f1(), Produced(m), Time(m.created_ms()));
  }
  return kOk;
}

grpc::Status GetModel(const ServiceClient& c, const std::string& ref, v1::ModelInfo* m) {
  v1::GetModelRequest req;
  req.set_model(ref);
  return Call(c.registry.get(), &v1::ModelRegistry::Stub::GetModel, req, m);
}

int Describe(const ServiceClient& c, const std::string& ref) {
  v1::ModelInfo m;
  if (grpc::Status s = GetModel(c, ref, &m); !s.ok()) return RpcFail(s);
  if (c.structured()) {
    PrintStructured(c.output, m);
    return kOk;
  }
  std::cout << "model " << RefWithAliases(m) << "\n"
            << "  produced by     " << Produced(m) << ", " << Time(m.created_ms()) << "\n"
            << absl::StrFormat("  %-15s %.4f\n", m.fold() == 0 ? "cv mean F1" : "test mean F1",
                               m.test_mean_f1());
  auto meta = ParseModelMetadata(m.metadata(), Ref(m) + " metadata");
  if (!meta.ok()) {
    std::cout << "  metadata        unreadable: " << meta.status().message() << "\n";
    return kOk;
  }
  std::cout << "  method          " << meta->method() << ", backbone " << meta->backbone() << "\n"
            << "  input           " << meta->resize() << " px face crop, centre " << meta->input()
            << " px, mean " << absl::StrJoin(meta->mean(), "/") << ", std "
            << absl::StrJoin(meta->std(), "/") << "\n"
            << "  AU   ";
  for (int au : meta->aus()) std::cout << absl::StrFormat("%7s", absl::StrCat("AU", au));
  std::cout << "\n  thr  ";
  for (double t : meta->thresholds()) std::cout << absl::StrFormat("%7.2f", t);
  std::cout << "\n";
  if (!meta->metrics().fields().empty()) {
    std::string metrics;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(meta->metrics(), &metrics, options);
    std::cout << "  last epoch      " << metrics << "\n";
  }
  return kOk;
}

int SetAlias(const ServiceClient& c, const std::string& ref, const std::string& alias) {
  v1::SetModelAliasRequest req;
  req.set_model(ref);
  req.set_alias(alias);
  v1::ModelInfo m;
  if (grpc::Status s = Call(c.registry.get(), &v1::ModelRegistry::Stub::SetModelAlias, req, &m);
      !s.ok())
    return RpcFail(s);
  return PrintInfo(c, m, absl::StrCat(m.name(), "@", alias, " -> "));
}

int RemoveAlias(const ServiceClient& c, const std::string& name, const std::string& alias) {
  v1::DeleteModelAliasRequest req;
  req.set_name(name);
  req.set_alias(alias);
  v1::ModelInfo m;
  if (grpc::Status s = Call(c.registry.get(), &v1::ModelRegistry::Stub::DeleteModelAlias, req, &m);
      !s.ok())
    return RpcFail(s);
  return PrintInfo(c, m, absl::StrCat("removed ", name, "@", alias, ", which pointed at "));
}

int Remove(const ServiceClient& c, const std::string& ref) {
  v1::DeleteModelRequest req;
  req.set_model(ref);
  v1::ModelInfo m;
  if (grpc::Status s = Call(c.registry.get(), &v1::ModelRegistry::Stub::DeleteModel, req, &m);
      !s.ok())
    return RpcFail(s);
  return PrintInfo(c, m, "removed from the registry: ");
}

// DIR/model.pt and DIR/model.json, a model directory that mal-serve --model-dir and mal-worker
// predict/export read. Built in DIR.tmp-PID and renamed, so DIR is complete or absent.
int Pull(const ServiceClient& c, const std::string& ref, const std::string& out, bool force) {
  std::error_code ec;
  if (fs::exists(out, ec) && !force) {
    return Fail(kFailed, absl::StrCat(out, " exists (--force replaces it)"));
  }
  v1::ModelInfo m;
  if (grpc::Status s = GetModel(c, ref, &m); !s.ok()) return RpcFail(s);
  const std::string tmp = absl::StrCat(out, ".tmp-", ::getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec)) {
    return Fail(kFailed, absl::StrCat(tmp, ": cannot create: ", ec.message()));
  }
  auto cleanup = [&tmp] {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
  };
  // Pinned to the version just resolved: an alias moving meanwhile cannot mix two versions.
  v1::DownloadModelRequest req;
  req.set_model(Ref(m));
  grpc::ClientContext ctx;
  rpc::SetDeadline(ctx, std::chrono::minutes(30));
  auto reader = c.registry->DownloadModel(&ctx, req);
  if (grpc::Status got = rpc::ReceiveFile(*reader, tmp + "/" + run_files::kModel); !got.ok()) {
    cleanup();
    return RpcFail(got);
  }
  if (absl::Status w = WriteFileAtomic(tmp + "/" + run_files::kModelMetadata, m.metadata());
      !w.ok()) {
    cleanup();
    return Fail(kFailed, std::string(w.message()));
  }
  if (fs::exists(out, ec)) {
    const std::string old = absl::StrCat(out, ".old-", ::getpid());
    fs::rename(out, old, ec);
    if (!ec) fs::rename(tmp, out, ec);
    std::error_code ignored;
    fs::remove_all(ec ? tmp : old, ignored);
  } else {
    fs::rename(tmp, out, ec);
  }
  if (ec) {
    cleanup();
    return Fail(kFailed, absl::StrCat(out, ": ", ec.message()));
  }
  if (c.structured()) {
    PrintStructured(c.output, m);
  } else {
    std::cout << "pulled " << Ref(m) << " into " << out << " (model.pt, model.json)\n";
  }
  return kOk;
}

// A subcommand taking the service options and the positional arguments `args`; `run` gets the
// connected client and their values.
CLI::App* AddCommand(
    CLI::App& parent, int* exit_code, const std::string& name, const std::string& help,
    std::vector<std::pair<std::string, std::string>> args,
    std::function<int(const ServiceClient&, const std::vector<std::string>&)> run) {
  struct Options {
    ServiceOptions service;
    std::vector<std::string> values;
  };
  auto o = std::make_shared<Options>();
  o->values.resize(args.size());
  CLI::App* cmd = parent.add_subcommand(name, help);
  for (size_t i = 0; i < args.size(); ++i) {
    cmd->add_option(args[i].first, o->values[i], args[i].second)->required();
  }
  AddServiceOptions(*cmd, &o->service);
  cmd->callback([o, run, exit_code] {
    auto client = Connect(o->service);
    *exit_code = client.ok() ? run(*client, o->values)
                             : Fail(kUsage, std::string(client.status().message()));
  });
  return cmd;
}

}  // namespace

void AddModelsCommand(CLI::App& app, int* exit_code) {
  CLI::App* models = app.add_subcommand(
      "models",
      "the coordinator's model registry: a model is NAME (its newest version), NAME:VERSION or "
      "NAME@ALIAS");
  models->require_subcommand(1);
  const std::pair<std::string, std::string> ref{"model", "NAME, NAME:VERSION or NAME@ALIAS"};

  auto name = std::make_shared<std::string>();
  CLI::App* ls = AddCommand(
      *models, exit_code, "ls", "registered models and their versions", {},
      [name](const ServiceClient& c, const std::vector<std::string>&) { return List(c, *name); });
  ls->add_option("name", *name, "only this model's versions");
  ls->footer("Example: malctl models ls bp4d-mal");

  AddCommand(
      *models, exit_code, "describe",
      "a version: where it came from, its metrics, AUs, input and thresholds", {ref},
      [](const ServiceClient& c, const std::vector<std::string>& v) { return Describe(c, v[0]); })
      ->footer("Example: malctl models describe bp4d-mal@champion");

  CLI::App* alias = models->add_subcommand("alias", "name versions: NAME@ALIAS");
  alias->require_subcommand(1);
  AddCommand(*alias, exit_code, "set", "point ALIAS at a version (moving it if it exists)",
             {ref, {"alias", "letters, digits, '-', '_'; not 'latest'"}},
             [](const ServiceClient& c, const std::vector<std::string>& v) {
               return SetAlias(c, v[0], v[1]);
             })
      ->footer("Example: malctl models alias set bp4d-mal:3 champion");
  AddCommand(*alias, exit_code, "rm", "remove an alias (the version stays)",
             {{"name", "the model's name"}, {"alias", "the alias"}},
             [](const ServiceClient& c, const std::vector<std::string>& v) {
               return RemoveAlias(c, v[0], v[1]);
             })
      ->footer("Example: malctl models alias rm bp4d-mal champion");

  AddCommand(
      *models, exit_code, "rm",
      "remove a version (NAME:VERSION or NAME@ALIAS) and its aliases from the registry; "
      "the experiment keeps its files, and the number is never reused",
      {{"model", "NAME:VERSION or NAME@ALIAS"}},
      [](const ServiceClient& c, const std::vector<std::string>& v) { return Remove(c, v[0]); })
      ->footer("Example: malctl models rm bp4d-mal:2");

  struct PullOptions {
    std::string out;
    bool force = false;
  };
  auto pull = std::make_shared<PullOptions>();
  CLI::App* pull_cmd =
      AddCommand(*models, exit_code, "pull",
                 "download a version as a model directory (model.pt, model.json) for mal-serve "
                 "--model-dir, mal-worker predict or mal-worker export",
                 {ref}, [pull](const ServiceClient& c, const std::vector<std::string>& v) {
                   return Pull(c, v[0], pull->out, pull->force);
                 });
  pull_cmd->add_option("--out", pull->out, "the directory to create")->required();
  pull_cmd->add_flag("--force", pull->force, "replace --out when it exists");
  pull_cmd->footer(
      "Example: malctl models pull bp4d-mal@champion --out models/bp4d-mal\n"
      "         mal-worker export --model-dir models/bp4d-mal --out bp4d-mal.pth  # "
      "torch.load-able");
}

}  // namespace mal::cli
