// Benchmark: decoded + augmented images per second per thread (100x100 and 256x256 JPEGs),
// through the real batch loader, and SynthFace generation speed.
// Usage: image_pipeline_bench [--images N] [--threads T] [--dir DIR]  (threads: 1, 2, 4 .. T)

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include "absl/strings/str_cat.h"
#include "common/data/sample.h"
#include "common/image/batch_loader.h"
#include "common/synth/face_renderer.h"
#include "common/synth/synth_dataset.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Writes `n` synthetic faces as `size` x `size` JPEGs and indexes them.
mal::data::DatasetIndex MakeJpegs(const std::string& dir, int n, int size) {
  std::filesystem::create_directories(dir);
  mal::data::DatasetIndex index;
  index.aus = {1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24};
  mal::Rng rng(5);
  for (int i = 0; i < n; ++i) {
    mal::synth::FaceState s;
    s.identity = mal::synth::RandomIdentity(rng);
    s.appearance = mal::synth::RandomAppearance(rng, 0.1);
    mal::data::Sample x;
    x.id = absl::StrCat(i);
    x.image = absl::StrCat(dir, "/", i, ".jpg");
    x.au.assign(index.aus.size(), 0);
    cv::imwrite(x.image, mal::synth::RenderFace(s, size), {cv::IMWRITE_JPEG_QUALITY, 95});
    index.samples.push_back(x);
  }
  return index;
}

double Throughput(const mal::data::DatasetIndex& index, int threads, int resize, int crop) {
  mal::image::BatchLoader::Options o;
  o.batch_size = 32;
  o.threads = threads;
  o.prefetch = 8;
  o.transform.resize = resize;
  o.transform.crop = crop;
  std::vector<int64_t> all(index.samples.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  auto loader = mal::image::BatchLoader::Create(&index, all, o);
  if (!loader.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loader.status().message()).c_str());
    std::exit(1);
  }
  (*loader)->StartEpoch(0);  // warm-up epoch: file cache
  while ((*loader)->Next()) {
  }
  const auto start = Clock::now();
  int64_t images = 0;
  for (int epoch = 1; epoch <= 2; ++epoch) {
    (*loader)->StartEpoch(epoch);
    while (auto b = (*loader)->Next()) images += b->size;
  }
  return images / Seconds(start);
}

}  // namespace

int main(int argc, char** argv) {
  int n = 512, max_threads = 2;
  // tmpfs where there is one, so the figures measure the CPU, not the disk.
  std::string dir = std::filesystem::is_directory("/dev/shm")
                        ? "/dev/shm/mal_image_bench"
                        : (std::filesystem::temp_directory_path() / "mal_image_bench").string();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--images") n = std::atoi(argv[i + 1]);
    else if (a == "--threads") max_threads = std::atoi(argv[i + 1]);
    else if (a == "--dir") dir = argv[i + 1];
  }
  std::printf("image pipeline: decode + resize + random crop + flip + normalise, %d images\n", n);
  std::printf("%-10s %-16s %8s %12s %18s\n", "jpeg", "resize->crop", "threads", "images/s",
              "images/s/thread");
  struct Case {
    int size, resize, crop;
  };
  for (const Case& c : {Case{100, 112, 96}, Case{256, 256, 224}}) {
    const auto index = MakeJpegs(absl::StrCat(dir, "/", c.size), n, c.size);
    for (int t = 1; t <= max_threads; t *= 2) {
      const double ips = Throughput(index, t, c.resize, c.crop);
      std::printf("%-10s %-16s %8d %12.0f %18.0f\n", absl::StrCat(c.size, "x", c.size).c_str(),
                  absl::StrCat(c.resize, "->", c.crop).c_str(), t, ips, ips / t);
    }
  }
  // SynthFace: render + JPEG encode in memory (CPU cost), then a whole dataset to `dir` (adds the
  // file system, which varies a lot between disks: use a tmpfs such as /dev/shm to compare).
  for (int t = 1; t <= max_threads; t *= 2) {
    constexpr int kImages = 1600;
    std::atomic<int> next{0};
    const auto start = Clock::now();
    auto work = [&] {
      mal::Rng rng(static_cast<uint64_t>(next.load()) + 11);
      std::vector<uchar> jpeg;
      while (next++ < kImages) {
        mal::synth::FaceState s;
        s.identity = mal::synth::RandomIdentity(rng);
        s.appearance = mal::synth::RandomAppearance(rng, 0.1);
        cv::imencode(".jpg", mal::synth::RenderFace(s, 112), jpeg, {cv::IMWRITE_JPEG_QUALITY, 95});
      }
    };
    std::vector<std::thread> pool;
    for (int k = 0; k < t; ++k) pool.emplace_back(work);
    for (auto& th : pool) th.join();
    const double ips = kImages / Seconds(start);
    std::printf("synthface render+encode 112px, %d thread(s): %.0f images/s (%.0f per thread)\n", t,
                ips, ips / t);
  }
  mal::synth::SynthOptions o;
  o.out = dir + "/synth";
  o.force = true;
  o.threads = max_threads;
  auto s = mal::synth::GenerateSynthFace(o);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.status().message()).c_str());
    return 1;
  }
  std::printf("synthface default dataset to %s: %lld images in %.2f s with %d thread(s): %.0f images/s\n",
              dir.c_str(), static_cast<long long>(s->au_images + s->fe_images), s->seconds,
              max_threads, (s->au_images + s->fe_images) / s->seconds);
  std::filesystem::remove_all(dir);
  return 0;
}
