// Benchmark: how well mal's face detector (common/image/face_detector.h) finds the faces of real
// photographs and how often it boxes something that is not a face, for each cascade given.
// tests/bench/face_detection.sh gathers the photos (Debian's opencv-doc, scikit-image's wheel) and
// writes the truth file; see docs/serving.md for the figures.
//
// Usage: face_detection_bench [--truth FILE.csv] [--synthface N] [--min-face PX] CASCADE.xml...
//   FILE.csv: "image,x,y,width,height" (px), one row per face; a photo without faces has one row
//   with the four box fields empty. Paths are relative to the truth file's folder.
// Each photo with faces is also tried altered (scaled 0.5x and 1.5x, turned -8 and +8 degrees,
// darker, brighter, noisy, blurred, JPEG quality 20, mirrored), beside each photo without faces,
// and all of them side by side at 0.5x on one canvas (a group). A detection counts as a found
// face when its intersection over union with a true box exceeds 0.3; every other one is false.
// --synthface N adds N SynthFace faces (random identity, pose, light, noise, blur, AUs at random
// intensities, 10% occluded; 160 px) on a grey canvas: the faces that mal-serve and
// `mal-worker predict` meet in the quickstart's data.

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/image/face_detector.h"
#include "common/synth/face_renderer.h"
#include "common/util/csv.h"
#include "common/util/random.h"

namespace {

struct Photo {
  std::string name;
  cv::Mat image;                // BGR
  std::vector<cv::Rect> faces;  // px
};

double IoU(const cv::Rect& a, const cv::Rect& b) {
  const double inter = (a & b).area();
  return inter / (a.area() + b.area() - inter);
}

cv::Rect Scale(const cv::Rect& r, double s, cv::Point shift = {}) {
  return cv::Rect(static_cast<int>(r.x * s) + shift.x, static_cast<int>(r.y * s) + shift.y,
                  static_cast<int>(r.width * s), static_cast<int>(r.height * s));
}

// The box that holds `r`'s corners after the affine map `m` (2 x 3, CV_64F).
cv::Rect Warp(const cv::Rect& r, const cv::Mat& m) {
  std::vector<cv::Point2f> corners = {{float(r.x), float(r.y)},
                                      {float(r.x + r.width), float(r.y)},
                                      {float(r.x), float(r.y + r.height)},
                                      {float(r.br().x), float(r.br().y)}};
  cv::transform(corners, corners, m);
  const cv::Rect outer = cv::boundingRect(corners);
  // A turned square's bounding box is larger than the face: keep the face's side, same centre.
  const cv::Point c(outer.x + outer.width / 2, outer.y + outer.height / 2);
  return cv::Rect(c.x - r.width / 2, c.y - r.height / 2, r.width, r.height);
}

std::vector<Photo> Variants(const std::vector<Photo>& faces, const std::vector<Photo>& empty) {
  std::vector<Photo> out;
  for (const Photo& p : faces) {
    out.push_back(p);
    for (double s : {0.5, 1.5}) {
      Photo v{absl::StrCat(p.name, " x", s), {}, {}};
      cv::resize(p.image, v.image, cv::Size(), s, s, s < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
      for (const auto& f : p.faces) v.faces.push_back(Scale(f, s));
      out.push_back(v);
    }
    for (double angle : {-8.0, 8.0}) {
      Photo v{absl::StrCat(p.name, " turned ", angle), {}, {}};
      const cv::Mat m = cv::getRotationMatrix2D(
          cv::Point2f(p.image.cols / 2.0f, p.image.rows / 2.0f), angle, 1.0);
      cv::warpAffine(p.image, v.image, m, p.image.size(), cv::INTER_LINEAR, cv::BORDER_REFLECT);
      for (const auto& f : p.faces) v.faces.push_back(Warp(f, m));
      out.push_back(v);
    }
    for (double gain : {0.5, 1.5}) {
      Photo v{absl::StrCat(p.name, " gain ", gain), {}, p.faces};
      p.image.convertTo(v.image, -1, gain, 0);
      out.push_back(v);
    }
    {
      Photo v{p.name + " noisy", p.image.clone(), p.faces};
      cv::Mat noise(p.image.size(), CV_16SC3);
      cv::randn(noise, 0, 20);
      cv::Mat wide;
      p.image.convertTo(wide, CV_16SC3);
      wide += noise;
      wide.convertTo(v.image, CV_8UC3);
      out.push_back(v);
    }
    {
      Photo v{p.name + " blurred", {}, p.faces};
      cv::GaussianBlur(p.image, v.image, cv::Size(0, 0), 2.0);
      out.push_back(v);
    }
    {
      Photo v{p.name + " jpeg 20", {}, p.faces};
      std::vector<uchar> bytes;
      cv::imencode(".jpg", p.image, bytes, {cv::IMWRITE_JPEG_QUALITY, 20});
      v.image = cv::imdecode(bytes, cv::IMREAD_COLOR);
      out.push_back(v);
    }
    {
      Photo v{p.name + " mirrored", {}, {}};
      cv::flip(p.image, v.image, 1);
      for (const auto& f : p.faces)
        v.faces.push_back(cv::Rect(p.image.cols - f.x - f.width, f.y, f.width, f.height));
      out.push_back(v);
    }
    for (const Photo& e : empty) {
      // The empty photo resized to the face photo's height, on its left.
      Photo v{absl::StrCat(e.name, " | ", p.name), {}, {}};
      cv::Mat left;
      const double s = static_cast<double>(p.image.rows) / e.image.rows;
      cv::resize(e.image, left,
                 cv::Size(std::max(1, static_cast<int>(e.image.cols * s)), p.image.rows));
      cv::hconcat(left, p.image, v.image);
      for (const auto& f : p.faces) v.faces.push_back(f + cv::Point(left.cols, 0));
      out.push_back(v);
    }
  }
  if (faces.size() > 1) {
    Photo group{"group", {}, {}};
    int width = 0, height = 0;
    for (const Photo& p : faces) {
      width += p.image.cols / 2;
      height = std::max(height, p.image.rows / 2);
    }
    group.image = cv::Mat(height, width, CV_8UC3, cv::Scalar(110, 110, 110));
    int x = 0;
    for (const Photo& p : faces) {
      cv::Mat half;
      cv::resize(p.image, half, cv::Size(p.image.cols / 2, p.image.rows / 2), 0, 0, cv::INTER_AREA);
      half.copyTo(group.image(cv::Rect(x, 0, half.cols, half.rows)));
      for (const auto& f : p.faces) group.faces.push_back(Scale(f, 0.5, cv::Point(x, 0)));
      x += half.cols;
    }
    out.push_back(group);
  }
  for (const Photo& e : empty) out.push_back(e);
  return out;
}

std::vector<Photo> SynthFaces(int n) {
  std::vector<Photo> out;
  mal::Rng rng(17);
  for (int i = 0; i < n; ++i) {
    mal::synth::FaceState state;
    state.identity = mal::synth::RandomIdentity(rng);
    state.appearance = mal::synth::RandomAppearance(rng, 0.1);
    for (double& a : state.au) a = rng.Uniform() < 0.3 ? rng.Uniform() : 0.0;
    Photo p{
        absl::StrCat("synthface ", i), cv::Mat(240, 240, CV_8UC3, cv::Scalar(110, 110, 110)), {}};
    const cv::Rect where(40, 40, 160, 160);
    mal::synth::RenderFace(state, 160).copyTo(p.image(where));
    p.faces.push_back(where);
    out.push_back(p);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Face detection on real photographs: faces found, false boxes, ms per photo");
  std::string truth_path;
  int min_face = 0, synthface = 0;
  std::vector<std::string> cascades;
  app.add_option("--truth", truth_path, "image,x,y,width,height (px) per face");
  app.add_option("--synthface", synthface, "SynthFace faces to add");
  app.add_option("--min-face", min_face, "px (0: the detector's default)");
  app.add_option("cascades", cascades, "OpenCV cascade files")->required();
  CLI11_PARSE(app, argc, argv);

  mal::TextLines truth;  // none without --truth
  if (!truth_path.empty()) {
    auto read = mal::ReadLines(truth_path);
    if (!read.ok()) {
      std::fprintf(stderr, "%s\n", read.status().ToString().c_str());
      return 1;
    }
    truth = std::move(*read);
  }
  const std::filesystem::path dir = std::filesystem::path(truth_path).parent_path();
  std::map<std::string, Photo> photos;
  std::vector<std::string> order;
  for (size_t i = 1; i < truth.lines.size(); ++i) {  // line 1: the header
    if (mal::IsBlankRecord(truth.lines[i])) continue;
    auto fields = mal::SplitCsvLine(truth.lines[i]);
    if (!fields.ok() || fields->size() != 5) {
      std::fprintf(stderr, "%s: expected image,x,y,width,height\n", truth.Where(i).c_str());
      return 1;
    }
    const std::string& name = (*fields)[0];
    if (!photos.count(name)) {
      Photo p{name, cv::imread((dir / name).string(), cv::IMREAD_COLOR), {}};
      if (p.image.empty()) {
        std::fprintf(stderr, "%s: cannot read %s\n", truth.Where(i).c_str(), (dir / name).c_str());
        return 1;
      }
      photos[name] = p;
      order.push_back(name);
    }
    if ((*fields)[1].empty()) continue;
    int box[4];
    for (int k = 0; k < 4; ++k) {
      auto v = mal::ParseInt((*fields)[k + 1], absl::StrCat(truth.Where(i), ": box"));
      if (!v.ok()) {
        std::fprintf(stderr, "%s\n", v.status().ToString().c_str());
        return 1;
      }
      box[k] = static_cast<int>(*v);
    }
    photos[name].faces.push_back(cv::Rect(box[0], box[1], box[2], box[3]));
  }
  std::vector<Photo> with_faces, without;
  for (const auto& name : order)
    (photos[name].faces.empty() ? without : with_faces).push_back(photos[name]);
  std::vector<Photo> cases = Variants(with_faces, without);
  for (Photo& p : SynthFaces(synthface)) cases.push_back(std::move(p));
  if (cases.empty()) {
    std::fprintf(stderr, "nothing to try: give --truth FILE.csv or --synthface N\n");
    return 1;
  }
  int true_faces = 0;
  for (const Photo& c : cases) true_faces += static_cast<int>(c.faces.size());
  std::printf(
      "%zu photos with faces, %zu without, %d SynthFace faces; %zu images tried, %d true "
      "faces\n",
      with_faces.size(), without.size(), synthface, cases.size(), true_faces);
  std::printf("%-40s %6s %6s %6s %12s %8s\n", "cascade", "found", "missed", "false", "false first",
              "ms/image");
  for (const std::string& cascade : cascades) {
    auto detector = mal::image::FaceDetector::Load(cascade);
    if (!detector.ok()) {
      std::fprintf(stderr, "%s\n", detector.status().ToString().c_str());
      return 1;
    }
    int found = 0, missed = 0, false_boxes = 0, false_first = 0;
    double ms = 0;
    std::vector<std::string> false_in, missed_in;
    for (const Photo& c : cases) {
      const auto start = std::chrono::steady_clock::now();
      const auto boxes = (*detector)->Detect(c.image, min_face);
      ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                .count();
      std::vector<bool> hit(c.faces.size(), false);
      for (size_t b = 0; b < boxes.size(); ++b) {
        bool face = false;
        for (size_t f = 0; f < c.faces.size(); ++f) {
          if (IoU(boxes[b].box, c.faces[f]) > 0.3) face = hit[f] = true;
        }
        if (!face) {
          ++false_boxes;
          false_in.push_back(absl::StrCat(c.name, " (", boxes[b].box.width, " px, confidence ",
                                          boxes[b].confidence, ")"));
          if (b == 0 && !c.faces.empty()) ++false_first;
        }
      }
      for (size_t f = 0; f < hit.size(); ++f) {
        (hit[f] ? found : missed)++;
        if (!hit[f]) missed_in.push_back(absl::StrCat(c.name, " (", c.faces[f].width, " px)"));
      }
    }
    std::printf("%-40s %6d %6d %6d %12d %8.1f\n", std::filesystem::path(cascade).filename().c_str(),
                found, missed, false_boxes, false_first, ms / cases.size());
    for (const auto& f : false_in) std::printf("    false: %s\n", f.c_str());
    for (const auto& m : missed_in) std::printf("    missed: %s\n", m.c_str());
  }
  return 0;
}
