// Serving end to end with the real binaries: mal-worker trains a small model, mal-serve serves its
// run directory, `malctl predict` sends images, a corrupt file and a video over RPC, and
// `mal-worker predict` computes the same rows in-process.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

std::string Bin(const std::string& name) { return testing::BinaryDir() + "/" + name; }

// Runs a shell command; returns its exit code and its stdout + stderr in `out`.
int Shell(const std::string& command, std::string* out) {
  out->clear();
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

class ServeTest : public ::testing::Test {
 protected:
  // One trained model for the suite: a tiny SynthFace and one epoch of STL (about 10 s).
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    std::string out;
    ASSERT_EQ(Shell(absl::StrCat(
                        Bin("client/malctl"), " data synth --out ", *dir_ / "sf",
                        " --au-subjects 24 --frames 8 --fe-subjects 10 --fe-images 40 --threads 1"),
                    &out),
              0)
        << out;
    testing::WriteText(
        *dir_ / "spec.yaml",
        "name: tiny\nmethod: stl\ndata: {au: {format: synthface, root: " + (*dir_ / "sf") +
            "}}\ncv: {protocol: standard, only: [1]}\n"
            "model: {backbone: small_cnn, input: 32, resize: 36}\n"
            "train: {epochs: 1, batch_au: 16, lr: 0.01, threads: 1}\n");
    ASSERT_EQ(Shell(absl::StrCat(Bin("worker/mal-worker"), " train -f ", *dir_ / "spec.yaml",
                                 " --fold 1 --out ", *dir_ / "models/tiny", " --quiet"),
                    &out),
              0)
        << out;
  }
  static void TearDownTestSuite() { delete dir_; }
  static testing::TempDir* dir_;
};
testing::TempDir* ServeTest::dir_ = nullptr;

// Starts mal-serve over the suite's models; returns its pid and port (0 when it did not start).
std::pair<pid_t, int> StartServe(const testing::TempDir& d, const std::string& log) {
  const pid_t serve = ::fork();
  if (serve == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    ::dup2(::fileno(f), 1);
    ::dup2(::fileno(f), 2);
    const std::string bin = Bin("server/mal-serve"), models = d / "models";
    ::execl(bin.c_str(), bin.c_str(), "--listen", "127.0.0.1:0", "--model-dir", models.c_str(),
            "--metrics-listen", "127.0.0.1:0", nullptr);
    ::_exit(127);
  }
  int port = 0;
  for (int i = 0; i < 200 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const std::string text = ReadFile(log).value_or("");
    if (const size_t at = text.find("listening on port "); at != std::string::npos) {
      port = std::stoi(text.substr(at + 18));
    }
  }
  return {serve, port};
}

TEST_F(ServeTest, PredictOverRpcMatchesInProcessAndReportsBadFilesInTheirRows) {
  const testing::TempDir& d = *dir_;
  // Inputs: four AU frames and a truncated JPEG in a folder, and a five-frame video.
  std::vector<fs::path> frames;
  for (const auto& e : fs::recursive_directory_iterator(d / "sf/au")) {
    if (e.path().extension() == ".jpg" && frames.size() < 4) frames.push_back(e.path());
  }
  ASSERT_EQ(frames.size(), 4u);
  fs::create_directories(d / "in");
  for (size_t i = 0; i < frames.size(); ++i)
    fs::copy_file(frames[i], d / absl::StrCat("in/f", i, ".jpg"));
  const std::string whole = *ReadFile(frames[0].string());
  testing::WriteText(d / "in/truncated.jpg", whole.substr(0, whole.size() / 2));
  {
    cv::VideoWriter writer(d / "clip.avi", cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 10.0,
                           cv::Size(112, 112));
    ASSERT_TRUE(writer.isOpened());
    for (int i = 0; i < 5; ++i) writer.write(cv::imread(frames[i % 4].string()));
  }

  const std::string log = d / "serve.log";
  auto [serve, port] = StartServe(d, log);
  ASSERT_GT(port, 0) << ReadFile(log).value_or("");

  std::string out;
  const std::string inputs = absl::StrCat(d / "in", " ", d / "clip.avi");
  ASSERT_EQ(Shell(absl::StrCat(Bin("client/malctl"), " predict --address 127.0.0.1:", port,
                               " --model tiny ", inputs, " --batch 3 --out ", d / "rpc.csv"),
                  &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("truncated.jpg"));  // named on stderr
  EXPECT_THAT(out, HasSubstr("10 image(s), 1 unreadable, 9 face(s)"));
  const std::string rpc = *ReadFile(d / "rpc.csv");
  const std::vector<std::string> lines = absl::StrSplit(rpc, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 11u);  // header, 5 files, 5 frames
  EXPECT_THAT(lines[0], ::testing::StartsWith(
                            "input,frame,face_id,timestamp,confidence,success,x,y,width,height,"
                            "AU01_p,AU02_p,AU04_p"));
  EXPECT_THAT(lines[5], ::testing::StartsWith(d / "in/truncated.jpg" + ",1,0,0.000,0,0,"));
  EXPECT_THAT(lines[7], ::testing::StartsWith(d / "clip.avi" + ",2,0,0.100,"));
  EXPECT_THAT(lines[1], HasSubstr(",1,"));  // a face found: success 1

  // The same rows without a server (the same batches: a forward pass may sum in another order at
  // another batch size).
  ASSERT_EQ(Shell(absl::StrCat(Bin("worker/mal-worker"), " predict --model-dir ", d / "models/tiny",
                               " ", inputs, " --batch 3 --out ", d / "local.csv"),
                  &out),
            0)
      << out;
  EXPECT_EQ(*ReadFile(d / "local.csv"), rpc);

  // An unknown model: exit 1, named, no output file.
  EXPECT_EQ(Shell(absl::StrCat(Bin("client/malctl"), " predict --address 127.0.0.1:", port,
                               " --model nope ", inputs, " --out ", d / "nope.csv"),
                  &out),
            1);
  EXPECT_THAT(out, HasSubstr("no model \"nope\""));
  EXPECT_FALSE(fs::exists(d / "nope.csv"));

  // Prometheus: RPC latency per method, faces per model call, model time; promtool accepts it.
  const std::string text = ReadFile(log).value_or("");
  const size_t at = text.find("mal-serve metrics on port ");
  ASSERT_NE(at, std::string::npos) << text;
  const int metrics_port = std::stoi(text.substr(at + 26));
  ASSERT_EQ(Shell(absl::StrCat("bash -c 'exec 3<>/dev/tcp/127.0.0.1/", metrics_port,
                               "; printf \"GET /metrics HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3' | "
                               "sed \"1,/^\\r\\?$/d\" > ",
                               d / "metrics.txt"),
                  &out),
            0)
      << out;
  const std::string metrics = *ReadFile(d / "metrics.txt");
  EXPECT_THAT(metrics, HasSubstr("# TYPE mal_serve_batch_faces histogram"));
  EXPECT_THAT(metrics, HasSubstr("mal_serve_model_seconds_count"));
  EXPECT_THAT(metrics, HasSubstr("code=\"NOT_FOUND\",method=\"/mal.v1.Inference/"));
  EXPECT_THAT(metrics, Not(HasSubstr("mal_serve_batch_faces_count 0")));
  EXPECT_EQ(Shell("promtool check metrics < " + (d / "metrics.txt"), &out), 0) << out << metrics;

  ::kill(serve, SIGTERM);
  int status = 0;
  ::waitpid(serve, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << ReadFile(log).value_or("");
}

// The Open Inference Protocol v2 from a client no one here wrote: Triton's tritonclient[grpc]
// (PyPI; deploy/test-python-deps.sh installs it and deploy/test.sh passes MAL_TEST_PYTHON).
TEST_F(ServeTest, TritonsClientTalksToMalServe) {
  const char* python = std::getenv("MAL_TEST_PYTHON");
  std::string out;
  if (python == nullptr || *python == 0 ||
      Shell(std::string(python) + " -c 'import tritonclient.grpc, numpy'", &out) != 0) {
    GTEST_SKIP()
        << "no Python with tritonclient[grpc]: set MAL_TEST_PYTHON (deploy/test.sh does, after "
           "deploy/test-python-deps.sh installs it from PyPI)";
  }
  const testing::TempDir& d = *dir_;
  std::vector<std::string> frames;
  for (const auto& e : fs::recursive_directory_iterator(d / "sf/au")) {
    if (e.path().extension() == ".jpg" && frames.size() < 3) frames.push_back(e.path().string());
  }
  ASSERT_EQ(frames.size(), 3u);
  auto [serve, port] = StartServe(d, d / "oip.log");
  ASSERT_GT(port, 0) << ReadFile(d / "oip.log").value_or("");
  testing::WriteText(d / "triton.py", absl::StrCat(R"(import sys
import numpy as np
import tritonclient.grpc as grpcclient
c = grpcclient.InferenceServerClient(url='127.0.0.1:)",
                                                   port, R"(')
assert c.is_server_live() and c.is_server_ready()
assert c.is_model_ready('tiny') and not c.is_model_ready('nope')
meta = c.get_model_metadata('tiny')
assert [i.name for i in meta.inputs] == ['IMAGES', 'PIXELS'], meta
paths = sys.argv[1:]
images = np.array([open(p, 'rb').read() for p in paths], dtype=np.object_)
inp = grpcclient.InferInput('IMAGES', [len(paths)], 'BYTES')
inp.set_data_from_numpy(images)
result = c.infer('tiny', [inp], outputs=[grpcclient.InferRequestedOutput('PROBABILITIES')])
p = result.as_numpy('PROBABILITIES')
assert p.shape == (len(paths), 12), p.shape
for row in p:
    print(' '.join('%.4f' % v for v in row))
)"));
  const int rc =
      Shell(absl::StrCat(python, " ", d / "triton.py", " ", absl::StrJoin(frames, " ")), &out);
  ::kill(serve, SIGTERM);
  ::waitpid(serve, nullptr, 0);
  ASSERT_EQ(rc, 0) << out;
  const std::vector<std::string> rows = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(rows.size(), 3u) << out;

  // The same probabilities as mal's own path with the images taken as face crops.
  ASSERT_EQ(Shell(absl::StrCat(Bin("worker/mal-worker"), " predict --face-crop --model-dir ",
                               d / "models/tiny", " ", absl::StrJoin(frames, " ")),
                  &out),
            0)
      << out;
  const std::vector<std::string> csv = absl::StrSplit(out, '\n', absl::SkipEmpty());
  for (size_t i = 0; i < 3; ++i) {
    const std::vector<std::string> cells = absl::StrSplit(csv[i + 1], ',');
    const std::vector<std::string> theirs = absl::StrSplit(rows[i], ' ');
    ASSERT_GE(cells.size(), 22u);
    for (size_t a = 0; a < 12; ++a)
      EXPECT_NEAR(std::stod(cells[10 + a]), std::stod(theirs[a]), 2e-4) << i << " " << a;
  }
}

TEST_F(ServeTest, MalServeRefusesAMissingModelDirectory) {
  std::string out;
  EXPECT_EQ(Shell(Bin("server/mal-serve") + " --listen 127.0.0.1:0 --model-dir /nonexistent/models",
                  &out),
            2);
  EXPECT_THAT(out, HasSubstr("/nonexistent/models"));
}

}  // namespace
}  // namespace mal
