#include "client/data_commands.h"

#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/output.h"
#include "common/data/folds.h"
#include "common/data/inspect.h"
#include "common/data/reader.h"
#include "common/synth/synth_dataset.h"
#include "common/util/cli.h"

namespace mal::cli {

namespace {

constexpr int kFailure = 1;

int Fail(int code, const std::string& message) {
  std::cerr << "malctl: " << message << "\n";
  return code;
}

absl::StatusOr<std::vector<int>> ParseAuList(const std::string& text) {
  std::vector<int> aus;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int au;
    if (!absl::SimpleAtoi(part, &au) || au < 1 || au > 99) {
      return absl::InvalidArgumentError(absl::StrCat("'", part, "' is not an AU number 1..99"));
    }
    if (std::find(aus.begin(), aus.end(), au) != aus.end()) {
      return absl::InvalidArgumentError(absl::StrCat("AU", au, " listed twice"));
    }
    aus.push_back(au);
  }
  return aus;
}

struct InspectOptions {
  std::string format, output = "table", unknown_au = "mask", part = "au", aus, val_split = "frames";
  data::ReaderOptions reader;
  data::FoldOptions folds;
};

int RunDataInspect(InspectOptions& o, bool folds_given) {
  if (!o.aus.empty()) o.reader.aus = *ParseAuList(o.aus);  // checked by the parser
  o.reader.drop_unknown_au = o.unknown_au == "drop";
  // On the command line a relative path is the shell's: from the current directory, as --root and
  // --images are (in a spec, data.*.manifest and .distribution are relative to the root).
  for (std::string* path : {&o.reader.manifest, &o.reader.distribution}) {
    if (!path->empty()) *path = std::filesystem::absolute(*path).lexically_normal().string();
  }
  o.folds.val_split = o.val_split == "subjects" ? data::FoldOptions::ValSplit::kSubjects
                                                : data::FoldOptions::ValSplit::kFrames;
  if (folds_given && o.folds.protocol.empty()) o.folds.protocol = "kfold";
  auto index = data::LoadDataset(o.format, o.reader,
                                 o.part == "fe" ? data::DataRole::kFe : data::DataRole::kAu);
  if (!index.ok()) return Fail(kFailure, std::string(index.status().message()));

  std::vector<data::Fold> folds;
  std::string protocol;
  if (!index->Subjects().empty()) {
    protocol = o.folds.protocol.empty() ? data::DefaultProtocol(index->format) : o.folds.protocol;
    auto made = data::MakeFolds(*index, o.folds);
    if (made.ok()) {
      folds = std::move(*made);
    } else {
      index->report.Note(absl::StrCat("no folds: ", made.status().message()));
    }
  }
  const v1::DatasetInspection inspection = data::Inspect(*index, protocol, folds);
  if (o.output == "json" || o.output == "yaml") {
    PrintStructured(o.output, inspection);
  } else {
    std::cout << data::FormatInspection(inspection);
  }
  return 0;
}

int RunDataSynth(const synth::SynthOptions& o, const std::string& preview) {
  if (!o.out.empty()) {
    auto summary = synth::GenerateSynthFace(o);
    if (!summary.ok()) return Fail(kFailure, std::string(summary.status().message()));
    const int64_t total = summary->au_images + summary->fe_images;
    std::cout << "wrote " << o.out << ": " << summary->au_images << " AU frames (" << o.au_subjects
              << " subjects, BP4D layout in au/), " << summary->fe_images
              << " FE images (RAF-DB layout in fe/) in " << summary->seconds << " s ("
              << static_cast<int64_t>(total / std::max(summary->seconds, 1e-9)) << " images/s)\n";
  }
  if (!preview.empty()) {
    absl::Status s = synth::WritePreviewSheet(preview, o.seed, o.size);
    if (!s.ok()) return Fail(kFailure, std::string(s.message()));
    std::cout << "wrote preview " << preview << "\n";
  }
  return 0;
}

void AddInspect(CLI::App& data, int* exit_code) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* cmd = data.add_subcommand(
      "inspect", "check a dataset on disk and show its subjects, labels and folds");
  cmd->add_option("--format", o->format, "bp4d, disfa, gft, rafdb, affectnet, csv or synthface")
      ->required();
  cmd->add_option("--root", o->reader.root, "the dataset's directory")->required();
  cmd->footer("Example: malctl data inspect --format bp4d --root /data/BP4D --aus 1,2,4 -o json");
  cmd->add_option("--aus", o->aus,
                  "the AUs to read, e.g. 1,2,4 (default: the format's standard list)")
      ->check([](const std::string& text) {
        auto aus = ParseAuList(text);
        return aus.ok() ? std::string() : std::string(aus.status().message());
      });
  cmd->add_option("-o,--output", o->output, "table (or text), json or yaml")
      ->check(CLI::IsMember({"table", "text", "json", "yaml"}));
  cmd->add_option("--protocol", o->folds.protocol,
                  "standard (published 3-fold lists), official (train/test split) or kfold "
                  "(default: the format's)")
      ->check(CLI::IsMember({"standard", "official", "kfold"}));
  CLI::Option* folds =
      cmd->add_option("--folds", o->folds.folds, "number of folds (implies --protocol kfold)")
          ->check(CLI::Range(2, 1000));
  cmd->add_option("--seed", o->folds.seed, "seed of the kfold shuffle");
  cmd->add_option("--val-fraction", o->folds.val_fraction,
                  "share of each training subject kept for the meta validation set (with "
                  "--val-split subjects: share of the training subjects, at least 2)")
      ->check(CLI::Range(0.0, 0.5));
  cmd->add_option("--val-split", o->val_split,
                  "frames (each training subject's, the paper) or subjects (whole training "
                  "subjects): mal.val_split")
      ->check(CLI::IsMember({"frames", "subjects"}));
  cmd->add_option("--images", o->reader.images, "image root (default: --root)");
  cmd->add_option("--distribution", o->reader.distribution,
                  "rafdb: the annotator distribution file (a relative path is from the current "
                  "directory)");
  cmd->add_option("--manifest", o->reader.manifest,
                  "csv: the manifest file (a relative path is from the current directory)");
  cmd->add_option("--split", o->reader.split,
                  "train, test or all (default: the format's; csv: the manifest's split column)")
      ->check(CLI::IsMember({"train", "test", "all"}));
  cmd->add_option("--unknown-au", o->unknown_au,
                  "a frame with an unknown AU label: mask the label or drop the frame")
      ->check(CLI::IsMember({"mask", "drop"}));
  cmd->add_option("--part", o->part, "synthface: the AU part or the FE part")
      ->check(CLI::IsMember({"au", "fe"}));
  cmd->add_flag("--strict", o->reader.strict,
                "any bad line is an error (default: skipped and counted)");
  cmd->add_flag("--verify-images", o->reader.verify_images, "decode every image");
  cmd->callback([o, folds, exit_code] { *exit_code = RunDataInspect(*o, folds->count() > 0); });
}

void AddSynth(CLI::App& data, int* exit_code) {
  auto o = std::make_shared<synth::SynthOptions>();
  auto preview = std::make_shared<std::string>();
  CLI::App* cmd =
      data.add_subcommand("synth", "generate the SynthFace dataset (docs/synthface.md)");
  CLI::Option* out = cmd->add_option("--out", o->out, "the dataset directory to write");
  cmd->footer("Example: malctl data synth --out .cache/synthface --preview synthface.png");
  CLI::Option* sheet =
      cmd->add_option("--preview", *preview, "also write a PNG sheet of every AU and expression");
  cmd->add_option("--au-subjects", o->au_subjects, "BP4D-style subjects")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--frames", o->frames, "frames per AU subject")->check(CLI::Range(1, 1000000));
  cmd->add_option("--fe-subjects", o->fe_subjects, "identities of the FE images")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--fe-images", o->fe_images, "FE images, train + test")
      ->check(CLI::Range(0, 10000000));
  cmd->add_option("--ambiguous", o->ambiguous,
                  "share of FE images with weak, partial or no AU evidence")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--occluders", o->occluder_probability, "probability of an occluder on a face")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--size", o->size, "image side, px")->check(CLI::Range(32, 1024));
  cmd->add_option("--seed", o->seed,
                  "the data seed: the same options and seed give the same bytes");
  cmd->add_option("--threads", o->threads, "0: all cores")->check(CLI::Range(0, 1024));
  cmd->add_flag("--force", o->force, "replace an existing non-empty --out");
  CLI::Option* version = cmd->add_flag("--generator-version",
                                       "print the N of \"generator N\" in synthface.txt and exit");
  cmd->callback([o, preview, out, sheet, version, exit_code] {
    if (version->count() > 0) {
      // What DIR/synthface.txt says as "generator N" when this binary makes the data, so scripts
      // can tell a cache made by an older generator without repeating the number.
      std::cout << synth::kSynthFaceGenerator << "\n";
      *exit_code = 0;
    } else if (out->count() == 0 && sheet->count() == 0) {
      *exit_code =
          Fail(kExitUsage,
               "data synth: --out DIR or --preview FILE is required (malctl data synth --help)");
    } else {
      *exit_code = RunDataSynth(*o, *preview);
    }
  });
}

}  // namespace

void AddDataCommands(CLI::App& app, int* exit_code) {
  CLI::App* data = app.add_subcommand("data", "local dataset commands (no server needed)");
  data->require_subcommand(1);
  AddInspect(*data, exit_code);
  AddSynth(*data, exit_code);
}

}  // namespace mal::cli
