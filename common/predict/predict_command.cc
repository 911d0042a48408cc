#include "common/predict/predict_command.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"

namespace mal::predict {

namespace {

std::atomic<bool> g_interrupted{false};
char g_tmp[4096] = "";  // --out's temporary file, for a second signal's handler
// The first Ctrl-C or SIGTERM ends the run after the request in flight; a second one at once
// (async-signal-safe: unlink and _exit only).
void OnInterrupt(int) {
  if (g_interrupted.exchange(true)) {
    if (g_tmp[0] != '\0') ::unlink(g_tmp);
    ::_exit(3);
  }
}

}  // namespace

void AddPredictOptions(CLI::App& cmd, PredictCommandOptions* o) {
  PredictOptions& p = o->predict;
  cmd.add_option("inputs", p.inputs, "image files, directories of images, video files");
  cmd.add_option("--camera", p.camera,
                 "read frames from this camera (OpenCV's index, e.g. 0) until Ctrl-C")
      ->check(CLI::Range(0, 255))
      ->default_str("");  // none (its -1 is not a camera)
  cmd.add_option("--frames", p.max_frames,
                 "videos and camera: stop after this many frames (0: no limit)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--every", p.every, "videos and camera: every N-th frame")
      ->check(CLI::Range(1, 100000));
  cmd.add_option("--batch", p.batch, "images per request")->check(CLI::Range(1, 4096));
  cmd.add_flag("--face-crop", p.face_crop, "the inputs are face crops: no face detection");
  cmd.add_option("--min-face", p.min_face,
                 "smallest face searched for, px (0: a tenth of the shorter side)")
      ->check(CLI::Range(0, 100000));
  cmd.add_option("-o,--output", p.format,
                 "csv (OpenFace-style columns) or json (one line per image)")
      ->check(CLI::IsMember({"csv", "json"}));
  cmd.add_option("--out", o->out, "write the rows to this file (default: stdout)");
}

int RunPredictCommand(const PredictCommandOptions& o, const Backend& backend, const char* program) {
  // Ctrl-C (or a SIGTERM) ends the run after the request in flight: the normal end of a camera,
  // an interruption otherwise (exit 3, --out not written).
  g_interrupted = false;
  std::signal(SIGINT, OnInterrupt);
  std::signal(SIGTERM, OnInterrupt);
  if (std::error_code ec; !o.out.empty() && std::filesystem::is_directory(o.out, ec)) {
    std::cerr << program << ": --out " << o.out << ": is a directory (give a file name)\n";
    return 2;
  }
  const std::string tmp = o.out.empty() ? "" : absl::StrCat(o.out, ".tmp.", ::getpid());
  std::snprintf(g_tmp, sizeof(g_tmp), "%s", tmp.size() < sizeof(g_tmp) ? tmp.c_str() : "");
  std::ofstream file;
  if (!tmp.empty()) {
    file.open(tmp, std::ios::binary | std::ios::trunc);
    if (!file) {
      std::cerr << program << ": --out " << o.out << ": cannot write here\n";
      return 2;
    }
  }
  std::ostream& out = tmp.empty() ? std::cout : file;
  PredictOptions predict = o.predict;
  predict.progress = ::isatty(STDERR_FILENO) != 0;  // a progress line for people, none in logs
  bool backend_failed = false;
  const Backend checked = [&](const v1::DetectActionUnitsRequest& request) {
    auto response = backend(request);
    backend_failed = backend_failed || !response.ok();
    return response;
  };
  auto summary = RunPredict(predict, checked, out, std::cerr, [] { return g_interrupted.load(); });
  const bool interrupted = g_interrupted.load() && o.predict.camera < 0;
  g_tmp[0] = '\0';
  if (!tmp.empty()) {
    file.close();
    std::error_code ec;
    if (!summary.ok() || !file || interrupted) {
      std::filesystem::remove(tmp, ec);
    } else {
      std::filesystem::rename(tmp, o.out, ec);
      if (ec) {
        std::filesystem::remove(tmp, ec);
        std::cerr << program << ": --out " << o.out << ": " << ec.message() << "\n";
        return 1;
      }
    }
  }
  if (!summary.ok()) {
    std::cerr << program << ": " << summary.status().message() << "\n";
    return backend_failed ? 1 : 2;
  }
  if (interrupted) {
    std::cerr << program << ": interrupted after " << summary->images << " image(s)"
              << (o.out.empty() ? "" : absl::StrCat("; ", o.out, " not written")) << "\n";
    return 3;
  }
  std::cerr << FormatSummary(*summary)
            << (o.out.empty() ? "" : absl::StrCat("rows written to ", o.out, "\n"));
  return 0;
}

}  // namespace mal::predict
