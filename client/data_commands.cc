#include "client/data_commands.h"

#include <iostream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/util/args.h"
#include "common/data/folds.h"
#include "common/data/inspect.h"
#include "common/data/reader.h"
#include "common/synth/synth_dataset.h"

namespace mal::cli {

namespace {

constexpr int kUsageError = 2;
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
      return absl::InvalidArgumentError(absl::StrCat("--aus: '", part, "' is not an AU number 1..99"));
    }
    aus.push_back(au);
  }
  return aus;
}

}  // namespace

int RunDataInspect(const std::vector<std::string>& argv) {
  auto args = Args::Parse(argv,
                          {"format", "root", "aus", "output", "protocol", "folds", "seed",
                           "val-fraction", "images", "distribution", "manifest", "split",
                           "unknown-au", "part"},
                          {"strict", "verify-images", "help"}, {{"o", "output"}});
  if (!args.ok()) return Fail(kUsageError, std::string(args.status().message()));
  if (args->Flag("help") || !args->Has("format") || !args->Has("root")) {
    std::cerr << "usage: malctl data inspect --format FORMAT --root DIR [--aus 1,2,4] [-o json]\n"
                 "  formats: bp4d disfa gft rafdb affectnet csv synthface\n"
                 "  --protocol standard|official|kfold  --folds N  --seed S  --val-fraction F\n"
                 "  --images DIR  --distribution FILE  --manifest FILE  --split train|test|all\n"
                 "  --unknown-au mask|drop  --part au|fe (synthface)  --strict  --verify-images\n";
    return args->Flag("help") ? 0 : kUsageError;
  }
  const std::string output = args->Get("output", "text");
  if (output != "text" && output != "json") return Fail(kUsageError, "-o: must be text or json");
  data::ReaderOptions options;
  options.root = args->Get("root");
  options.images = args->Get("images");
  options.distribution = args->Get("distribution");
  options.manifest = args->Get("manifest");
  options.split = args->Get("split");
  options.strict = args->Flag("strict");
  options.verify_images = args->Flag("verify-images");
  const std::string unknown = args->Get("unknown-au", "mask");
  if (unknown != "mask" && unknown != "drop") return Fail(kUsageError, "--unknown-au: mask or drop");
  options.drop_unknown_au = unknown == "drop";
  if (args->Has("aus")) {
    auto aus = ParseAuList(args->Get("aus"));
    if (!aus.ok()) return Fail(kUsageError, std::string(aus.status().message()));
    options.aus = *aus;
  }
  const std::string part = args->Get("part", "au");
  if (part != "au" && part != "fe") return Fail(kUsageError, "--part: au or fe");
  data::FoldOptions fold_options;
  fold_options.protocol = args->Get("protocol");
  auto folds_n = args->GetInt("folds", 3);
  auto seed = args->GetInt("seed", 1);
  auto val = args->GetDouble("val-fraction", 0.02);
  if (!folds_n.ok()) return Fail(kUsageError, std::string(folds_n.status().message()));
  if (!seed.ok()) return Fail(kUsageError, std::string(seed.status().message()));
  if (!val.ok()) return Fail(kUsageError, std::string(val.status().message()));
  if (args->Has("folds") && fold_options.protocol.empty()) fold_options.protocol = "kfold";
  fold_options.folds = static_cast<int>(*folds_n);
  fold_options.seed = static_cast<uint64_t>(*seed);
  fold_options.val_fraction = *val;

  const std::string format = args->Get("format");
  auto index = data::LoadDataset(format, options,
                                 part == "fe" ? data::DataRole::kFe : data::DataRole::kAu);
  if (!index.ok()) return Fail(kFailure, std::string(index.status().message()));

  std::vector<data::Fold> folds;
  std::string protocol;
  if (!index->Subjects().empty()) {
    protocol = fold_options.protocol.empty() ? data::DefaultProtocol(index->format)
                                             : fold_options.protocol;
    auto made = data::MakeFolds(*index, fold_options);
    if (made.ok()) {
      folds = std::move(*made);
    } else {
      index->report.Note(absl::StrCat("no folds: ", made.status().message()));
    }
  }
  const v1::DatasetInspection inspection = data::Inspect(*index, protocol, folds);
  if (output == "json") {
    std::string json;
    google::protobuf::util::JsonPrintOptions json_options;
    json_options.add_whitespace = true;
    json_options.preserve_proto_field_names = true;
    json_options.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(inspection, &json, json_options);
    std::cout << json;
  } else {
    std::cout << data::FormatInspection(inspection);
  }
  return 0;
}

int RunDataSynth(const std::vector<std::string>& argv) {
  auto args = Args::Parse(argv,
                          {"out", "au-subjects", "fe-subjects", "frames", "fe-images", "ambiguous",
                           "size", "seed", "preview", "threads", "occluders"},
                          {"force", "help", "generator-version"});
  if (!args.ok()) return Fail(kUsageError, std::string(args.status().message()));
  if (args->Flag("generator-version")) {
    // What DIR/synthface.txt says as "generator N" when this binary makes the data, so scripts
    // can tell a cache made by an older generator without repeating the number.
    std::cout << synth::kSynthFaceGenerator << "\n";
    return 0;
  }
  if (args->Flag("help") || (!args->Has("out") && !args->Has("preview"))) {
    std::cerr << "usage: malctl data synth --out DIR [--au-subjects N] [--fe-subjects N] "
                 "[--frames N] [--fe-images N]\n"
                 "       [--ambiguous FRACTION] [--size PX] [--seed S] [--preview sheet.png] "
                 "[--threads N] [--occluders P] [--force]\n"
                 "       malctl data synth --generator-version   (the N of \"generator N\" in synthface.txt)\n";
    return args->Flag("help") ? 0 : kUsageError;
  }
  synth::SynthOptions o;
  o.out = args->Get("out");
  o.force = args->Flag("force");
  if (absl::Status s = args->ReadInts({{"au-subjects", &o.au_subjects}, {"fe-subjects", &o.fe_subjects},
                                       {"frames", &o.frames}, {"fe-images", &o.fe_images},
                                       {"size", &o.size}, {"threads", &o.threads}});
      !s.ok()) {
    return Fail(kUsageError, std::string(s.message()));
  }
  auto seed = args->GetInt("seed", 1);
  auto ambiguous = args->GetDouble("ambiguous", o.ambiguous);
  auto occluders = args->GetDouble("occluders", o.occluder_probability);
  if (!seed.ok()) return Fail(kUsageError, std::string(seed.status().message()));
  if (!ambiguous.ok()) return Fail(kUsageError, std::string(ambiguous.status().message()));
  if (!occluders.ok()) return Fail(kUsageError, std::string(occluders.status().message()));
  o.seed = static_cast<uint64_t>(*seed);
  o.ambiguous = *ambiguous;
  o.occluder_probability = *occluders;

  if (!o.out.empty()) {
    auto summary = synth::GenerateSynthFace(o);
    if (!summary.ok()) return Fail(kFailure, std::string(summary.status().message()));
    const int64_t total = summary->au_images + summary->fe_images;
    std::cout << "wrote " << o.out << ": " << summary->au_images << " AU frames (" << o.au_subjects
              << " subjects, BP4D layout in au/), " << summary->fe_images
              << " FE images (RAF-DB layout in fe/) in " << summary->seconds << " s ("
              << static_cast<int64_t>(total / std::max(summary->seconds, 1e-9)) << " images/s)\n";
  }
  if (args->Has("preview")) {
    absl::Status s = synth::WritePreviewSheet(args->Get("preview"), o.seed, o.size);
    if (!s.ok()) return Fail(kFailure, std::string(s.message()));
    std::cout << "wrote preview " << args->Get("preview") << "\n";
  }
  return 0;
}

}  // namespace mal::cli
