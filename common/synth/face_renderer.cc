// Over 400 lines on purpose: one renderer; each facial action unit's drawing sits beside the
// geometry it moves.

#include "common/synth/face_renderer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <opencv2/imgproc.hpp>

namespace mal::synth {

namespace {

constexpr int kShift = 4;                // fixed-point bits for sub-pixel drawing
constexpr double kOne = 1 << kShift;
constexpr int kSupersample = 2;          // drawn at 2x, then area-downscaled
constexpr double kCenterY = 0.52;        // face centre, in image sides

// Intensity of `au` in `state` (0 when it is not a SynthFace AU).
double A(const FaceState& s, int au) {
  const int slot = SynthAuSlot(au);
  return slot < 0 ? 0.0 : std::clamp(s.au[slot], 0.0, 1.0);
}

cv::Scalar Darken(const cv::Scalar& c, double k) { return c * (1.0 - std::clamp(k, 0.0, 1.0)); }

cv::Scalar Mix(const cv::Scalar& a, const cv::Scalar& b, double t) { return a * (1 - t) + b * t; }

// Contrast of an AU's wrinkles and folds at intensity `a`: a present AU shows at least 35% of its
// full contrast (FACS codes an AU only where its evidence is visible, docs/synthface.md).
double Visible(double a) { return a > 0 ? 0.35 + 0.65 * a : 0.0; }

// Width of wrinkle and fold lines, in image sides: at least about one pixel at 64-96 px.
constexpr double kWrinkle = 0.011;

// Drawing in image-side units on a canvas of `px` pixels.
class Canvas {
 public:
  Canvas(cv::Mat& img) : img_(img), px_(img.cols) {}

  cv::Point P(double x, double y) const {
    return cv::Point(static_cast<int>(std::lround(x * px_ * kOne)),
                     static_cast<int>(std::lround(y * px_ * kOne)));
  }
  int T(double thickness) const {
    return std::max(1, static_cast<int>(std::lround(thickness * px_)));
  }
  void Poly(const std::vector<cv::Point2d>& pts, const cv::Scalar& color, double thickness,
            bool closed = false) {
    std::vector<cv::Point> p;
    for (const auto& q : pts) p.push_back(P(q.x, q.y));
    cv::polylines(img_, p, closed, color, T(thickness), cv::LINE_AA, kShift);
  }
  void Fill(const std::vector<cv::Point2d>& pts, const cv::Scalar& color) {
    std::vector<cv::Point> p;
    for (const auto& q : pts) p.push_back(P(q.x, q.y));
    cv::fillPoly(img_, std::vector<std::vector<cv::Point>>{p}, color, cv::LINE_AA, kShift);
  }
  void Ellipse(double x, double y, double ax, double ay, double angle, const cv::Scalar& color,
               double thickness = -1, double start = 0, double end = 360) {
    cv::ellipse(img_, P(x, y),
                cv::Size(static_cast<int>(std::lround(ax * px_ * kOne)),
                         static_cast<int>(std::lround(ay * px_ * kOne))),
                angle, start, end, color, thickness < 0 ? cv::FILLED : T(thickness), cv::LINE_AA,
                kShift);
  }

 private:
  cv::Mat& img_;
  int px_;
};

// Samples a quadratic curve from a to c passing through b at its middle.
std::vector<cv::Point2d> Curve(cv::Point2d a, cv::Point2d b, cv::Point2d c, int n = 12) {
  const cv::Point2d ctrl = 2.0 * b - 0.5 * (a + c);
  std::vector<cv::Point2d> out;
  for (int i = 0; i <= n; ++i) {
    const double t = static_cast<double>(i) / n;
    out.push_back((1 - t) * (1 - t) * a + 2 * (1 - t) * t * ctrl + t * t * c);
  }
  return out;
}

void Append(std::vector<cv::Point2d>& a, const std::vector<cv::Point2d>& b) {
  a.insert(a.end(), b.begin(), b.end());
}

// Vertical displacement of the lower face by a jaw drop: 0 above the mouth, growing to the chin.
double JawShift(const FaceState& s, double y) {
  const Identity& id = s.identity;
  const double top = id.mouth_y - 0.02;
  const double chin = kCenterY + id.face_half_height;
  if (y <= top) return 0;
  return 0.05 * A(s, 26) * std::min(1.0, (y - top) / (chin - top));
}

void DrawHeadAndHair(Canvas& c, const FaceState& s) {
  const Identity& id = s.identity;
  // Hair behind the head.
  c.Ellipse(0.5, kCenterY - 0.05, id.face_half_width + 0.035, id.face_half_height + 0.01, 0, id.hair);
  std::vector<cv::Point2d> outline;
  for (int i = 0; i < 96; ++i) {
    const double t = 2 * M_PI * i / 96;
    const double x = 0.5 + id.face_half_width * std::cos(t);
    double y = kCenterY + id.face_half_height * std::sin(t);
    y += JawShift(s, y);
    outline.emplace_back(x, y);
  }
  c.Fill(outline, id.skin);
  // Hair over the top of the forehead.
  std::vector<cv::Point2d> cap;
  for (const auto& p : outline) {
    if (p.y < id.hair_line) cap.push_back(p);
  }
  if (cap.size() > 2) {
    std::sort(cap.begin(), cap.end(), [](auto& a, auto& b) { return a.x < b.x; });
    std::vector<cv::Point2d> poly = cap;
    poly.emplace_back(cap.back().x, id.hair_line);
    poly.emplace_back(0.5, id.hair_line + 0.025);
    poly.emplace_back(cap.front().x, id.hair_line);
    c.Fill(poly, id.hair);
  }
}

void DrawBrows(Canvas& c, const FaceState& s) {
  const Identity& id = s.identity;
  const double a1 = A(s, 1), a2 = A(s, 2), a4 = A(s, 4);
  const double base = id.eye_y - id.brow_gap;
  const cv::Scalar wrinkle1 = Darken(id.skin, 0.55 * Visible(a1));
  const cv::Scalar wrinkle2 = Darken(id.skin, 0.55 * Visible(a2));
  for (int side : {-1, 1}) {
    // AU2: lateral forehead wrinkles above the outer brow.
    if (a2 > 0) {
      for (int k = 0; k < 2; ++k) {
        const double y = base - 0.055 - 0.022 * k;
        c.Poly(Curve({0.5 + side * (id.eye_dx - 0.01), y + 0.004},
                     {0.5 + side * (id.eye_dx + 0.025), y - 0.004},
                     {0.5 + side * (id.eye_dx + 0.06), y + 0.004}),
               wrinkle2, kWrinkle);
      }
    }
    const double inner_x = 0.5 + side * (id.eye_dx - 0.45 * id.brow_length - 0.016 * a4);
    const double outer_x = 0.5 + side * (id.eye_dx + 0.55 * id.brow_length);
    const double inner_y = base - 0.05 * a1 + 0.035 * a4;
    const double outer_y = base + 0.004 - 0.05 * a2 + 0.015 * a4;
    const double mid_y = 0.5 * (inner_y + outer_y) - 0.012;
    c.Poly(Curve({inner_x, inner_y}, {0.5 * (inner_x + outer_x), mid_y}, {outer_x, outer_y}),
           Darken(id.hair, 0.1), id.brow_thickness);
  }
  // AU1: central forehead wrinkles.
  if (a1 > 0) {
    for (int k = 0; k < 2; ++k) {
      const double y = base - 0.06 - 0.022 * k;
      c.Poly(Curve({0.5 - 0.06, y + 0.004}, {0.5, y - 0.004}, {0.5 + 0.06, y + 0.004}), wrinkle1,
             kWrinkle);
    }
  }
  // AU4: vertical furrows between the brows.
  if (a4 > 0) {
    for (int side : {-1, 1}) {
      c.Poly({{0.5 + side * 0.014, base - 0.02}, {0.5 + side * 0.01, base + 0.035}},
             Darken(id.skin, 0.6 * Visible(a4)), kWrinkle);
    }
  }
}

void DrawEyes(Canvas& c, const FaceState& s) {
  const Identity& id = s.identity;
  const double a6 = A(s, 6), a7 = A(s, 7);
  const double open = id.eye_half_height * (1 - 0.65 * a7) * (1 - 0.2 * a6);
  for (int side : {-1, 1}) {
    const double x = 0.5 + side * id.eye_dx;
    c.Ellipse(x, id.eye_y, id.eye_half_width, open, 0, cv::Scalar(235, 238, 240));
    const double r = std::min(id.eye_half_height * 0.85, open);
    c.Ellipse(x, id.eye_y, id.eye_half_height * 0.85, r, 0, id.iris);
    c.Ellipse(x, id.eye_y, id.eye_half_height * 0.35, std::min(r, id.eye_half_height * 0.35), 0,
              cv::Scalar(20, 20, 20));
    // Upper lid line; the lower lid rises and thickens with AU6 and AU7.
    c.Ellipse(x, id.eye_y, id.eye_half_width, open, 0, Darken(id.skin, 0.7), 0.008, 180, 360);
    c.Ellipse(x, id.eye_y - 0.006 * a6, id.eye_half_width, open, 0,
              Darken(id.skin, 0.3 + 0.25 * a7), 0.005 + 0.005 * a7, 0, 180);
  }
}

void DrawCheeks(Canvas& c, const FaceState& s) {
  const Identity& id = s.identity;
  const double a6 = A(s, 6);
  if (a6 <= 0) return;
  const cv::Scalar blush = Mix(id.skin, cv::Scalar(90, 90, 200), 0.4 * a6);
  for (int side : {-1, 1}) {
    c.Ellipse(0.5 + side * (id.eye_dx + 0.01), id.eye_y + 0.09 - 0.035 * a6, 0.055, 0.03, 0, blush);
    // Crow's feet at the outer eye corner.
    const double x0 = 0.5 + side * (id.eye_dx + id.eye_half_width + 0.008);
    for (int k = -1; k <= 1; ++k) {
      c.Poly({{x0, id.eye_y + 0.008 * k}, {x0 + side * 0.03, id.eye_y + 0.018 * k}},
             Darken(id.skin, 0.6 * Visible(a6)), kWrinkle);
    }
  }
}

void DrawNose(Canvas& c, const FaceState& s) {
  const Identity& id = s.identity;
  const double a9 = A(s, 9);
  const double tip = id.eye_y + id.nose_length;
  const cv::Scalar line = Darken(id.skin, 0.25);
  c.Poly(Curve({0.5 - 0.012, id.eye_y + 0.02}, {0.5 - 0.018, tip - 0.04}, {0.5 - 0.028, tip}), line,
         0.006);
  for (int side : {-1, 1}) {
    c.Ellipse(0.5 + side * (0.022 + 0.005 * a9), tip - 0.01 * a9, 0.012 + 0.004 * a9, 0.007, 0,
              Darken(id.skin, 0.55));
  }
  if (a9 > 0) {
    for (int k = 0; k < 3; ++k) {
      const double y = id.eye_y + 0.03 + 0.014 * k;
      c.Poly(Curve({0.5 - 0.026, y}, {0.5, y - 0.006}, {0.5 + 0.026, y}),
             Darken(id.skin, 0.6 * Visible(a9)), kWrinkle);
    }
  }
}

void DrawMouth(Canvas& c, const FaceState& s) {
  const Identity& id = s.identity;
  const double a10 = A(s, 10), a12 = A(s, 12), a14 = A(s, 14), a15 = A(s, 15), a17 = A(s, 17);
  const double a23 = A(s, 23), a24 = A(s, 24), a25 = A(s, 25), a26 = A(s, 26);
  const double tip = id.eye_y + id.nose_length;

  // AU10: nasolabial folds from the nose wings towards the mouth corners.
  if (a10 > 0) {
    for (int side : {-1, 1}) {
      c.Poly(Curve({0.5 + side * 0.045, tip + 0.005},
                   {0.5 + side * (id.mouth_half_width + 0.005), id.mouth_y - 0.05},
                   {0.5 + side * (id.mouth_half_width + 0.025), id.mouth_y + 0.005}),
             Darken(id.skin, 0.55 * Visible(a10)), kWrinkle);
    }
  }
  const double half_w = id.mouth_half_width * (1 + 0.3 * a12 - 0.1 * a14) * (1 - 0.2 * a24);
  const double corner_y = id.mouth_y - 0.045 * a12 + 0.045 * a15;
  const double thick = id.lip_thickness * (1 - 0.6 * a23) * (1 - 0.45 * a24);
  // Parted lips open both ways; a dropped jaw takes only the lower lip down.
  const double upper_inner = id.mouth_y - 0.011 * a25;
  const double lower_inner = id.mouth_y + 0.011 * a25 + 0.045 * a26;
  const double gap = lower_inner - upper_inner;
  const cv::Point2d left(0.5 - half_w, corner_y), right(0.5 + half_w, corner_y);
  const double top = upper_inner - thick * 1.1 - 0.03 * a10;
  const double bottom = lower_inner + thick * 1.3 - 0.008 * a17;

  // Upper lip: outer outline with a cupid's bow, then the inner line back.
  std::vector<cv::Point2d> upper;
  Append(upper, Curve(left, {0.5 - 0.5 * half_w, top - 0.003}, {0.5, top + 0.004}, 8));
  Append(upper, Curve({0.5, top + 0.004}, {0.5 + 0.5 * half_w, top - 0.003}, right, 8));
  Append(upper, Curve(right, {0.5, upper_inner}, left));
  c.Fill(upper, id.lips);
  std::vector<cv::Point2d> lower = Curve(left, {0.5, lower_inner}, right);
  Append(lower, Curve(right, {0.5, bottom}, left));
  c.Fill(lower, id.lips * 1.08);
  if (gap > 0.003) {
    std::vector<cv::Point2d> inside = Curve(left, {0.5, upper_inner}, right);
    Append(inside, Curve(right, {0.5, lower_inner}, left));
    c.Fill(inside, cv::Scalar(40, 25, 45));
    std::vector<cv::Point2d> teeth = Curve(left, {0.5, upper_inner}, right);
    Append(teeth, Curve(right, {0.5, upper_inner + std::min(gap * 0.4, 0.012)}, left));
    c.Fill(teeth, cv::Scalar(225, 230, 232));
  } else {
    c.Poly(Curve(left, {0.5, upper_inner}, right), Darken(id.lips, 0.5), 0.005);
  }
  // AU23: tightened lips get a hard rolled edge.
  if (a23 > 0) {
    c.Poly(Curve(left, {0.5, top + 0.004}, right), Darken(id.lips, 0.4 * Visible(a23)), kWrinkle);
  }
  // AU24: skin bulges above and below pressed lips.
  if (a24 > 0) {
    const cv::Scalar bulge = Darken(id.skin, 0.3 * Visible(a24));
    c.Poly(Curve({0.5 - half_w * 0.7, top - 0.012}, {0.5, top - 0.02}, {0.5 + half_w * 0.7, top - 0.012}),
           bulge, kWrinkle);
    c.Poly(Curve({0.5 - half_w * 0.7, bottom + 0.014}, {0.5, bottom + 0.022},
                 {0.5 + half_w * 0.7, bottom + 0.014}),
           bulge, kWrinkle);
  }
  // AU14: dimples just outside the corners.
  if (a14 > 0) {
    for (int side : {-1, 1}) {
      c.Ellipse(0.5 + side * (half_w + 0.018), corner_y, 0.006, 0.016, 0,
                Darken(id.skin, 0.5 * Visible(a14)), kWrinkle, side > 0 ? 90 : -90, side > 0 ? 270 : 90);
    }
  }
  // AU17: chin boss wrinkles.
  if (a17 > 0) {
    const double y = id.mouth_y + 0.1;
    const double y_chin = y + JawShift(s, y);
    for (int k = -2; k <= 2; ++k) {
      c.Ellipse(0.5 + 0.022 * k, y_chin + 0.01 * (k % 2), 0.007, 0.005, 0,
                Darken(id.skin, 0.55 * Visible(a17)), kWrinkle);
    }
  }
}

}  // namespace

int SynthAuSlot(int au) {
  for (size_t i = 0; i < kSynthAus.size(); ++i) {
    if (kSynthAus[i] == au) return static_cast<int>(i);
  }
  return -1;
}

Identity RandomIdentity(Rng& rng) {
  Identity id;
  // Skin tones from light to dark (BGR), then a random blend of two neighbours.
  static const cv::Scalar kSkins[] = {{189, 205, 241}, {160, 190, 230}, {130, 165, 210},
                                      {100, 135, 185}, {70, 100, 150},  {50, 70, 110}};
  const int k = static_cast<int>(rng.Below(5));
  id.skin = Mix(kSkins[k], kSkins[k + 1], rng.Uniform());
  static const cv::Scalar kHair[] = {{20, 20, 25}, {30, 45, 70}, {40, 80, 130}, {80, 140, 190}, {150, 150, 150}};
  id.hair = kHair[rng.Below(5)];
  id.background = cv::Scalar(rng.Uniform(60, 230), rng.Uniform(60, 230), rng.Uniform(60, 230));
  id.lips = Mix(id.skin, cv::Scalar(90, 80, 190), rng.Uniform(0.35, 0.6));
  static const cv::Scalar kIris[] = {{40, 60, 90}, {30, 40, 50}, {130, 110, 60}, {80, 120, 80}};
  id.iris = kIris[rng.Below(4)];
  id.face_half_width = rng.Uniform(0.30, 0.35);
  id.face_half_height = rng.Uniform(0.40, 0.44);
  id.eye_y = rng.Uniform(0.40, 0.44);
  id.eye_dx = rng.Uniform(0.135, 0.16);
  id.eye_half_width = rng.Uniform(0.05, 0.062);
  id.eye_half_height = rng.Uniform(0.024, 0.032);
  id.brow_gap = rng.Uniform(0.072, 0.085);
  id.brow_length = rng.Uniform(0.10, 0.13);
  id.brow_thickness = rng.Uniform(0.014, 0.022);
  id.nose_length = rng.Uniform(0.13, 0.16);
  id.mouth_y = id.eye_y + id.nose_length + rng.Uniform(0.12, 0.14);
  id.mouth_half_width = rng.Uniform(0.10, 0.125);
  id.lip_thickness = rng.Uniform(0.016, 0.024);
  id.hair_line = rng.Uniform(0.14, 0.19);
  return id;
}

Appearance RandomAppearance(Rng& rng, double occluder_probability) {
  Appearance a;
  a.rotation_deg = rng.Uniform(-7, 7);
  a.scale = rng.Uniform(0.94, 1.06);
  a.shift_x = rng.Uniform(-0.03, 0.03);
  a.shift_y = rng.Uniform(-0.03, 0.03);
  a.light_angle = rng.Uniform(0, 2 * M_PI);
  a.light_strength = rng.Uniform(0, 0.35);
  a.brightness = rng.Uniform(0.8, 1.15);
  a.noise_sigma = rng.Uniform(0, 6);
  a.blur_sigma = rng.Bernoulli(0.3) ? rng.Uniform(0.4, 1.1) : 0;
  a.occluder = rng.Bernoulli(occluder_probability);
  if (a.occluder) {
    a.occluder_center = {rng.Uniform(0.25, 0.75), rng.Uniform(0.3, 0.85)};
    a.occluder_axes = {rng.Uniform(0.06, 0.16), rng.Uniform(0.04, 0.12)};
    a.occluder_angle = rng.Uniform(0, 180);
    a.occluder_color = cv::Scalar(rng.Uniform(20, 240), rng.Uniform(20, 240), rng.Uniform(20, 240));
  }
  a.noise_seed = rng.NextU64();
  return a;
}

cv::Mat RenderFace(const FaceState& s, int size) {
  const int big = size * kSupersample;
  cv::Mat img(big, big, CV_8UC3, s.identity.background);
  Canvas c(img);
  DrawHeadAndHair(c, s);
  DrawCheeks(c, s);
  DrawBrows(c, s);
  DrawEyes(c, s);
  DrawNose(c, s);
  DrawMouth(c, s);
  const Appearance& a = s.appearance;
  if (a.occluder) {
    c.Ellipse(a.occluder_center.x, a.occluder_center.y, a.occluder_axes.width,
              a.occluder_axes.height, a.occluder_angle, a.occluder_color);
  }
  cv::Mat out;
  cv::resize(img, out, cv::Size(size, size), 0, 0, cv::INTER_AREA);

  if (a.rotation_deg != 0 || a.scale != 1 || a.shift_x != 0 || a.shift_y != 0) {
    cv::Mat m = cv::getRotationMatrix2D(cv::Point2f(size / 2.f, size / 2.f), a.rotation_deg, a.scale);
    m.at<double>(0, 2) += a.shift_x * size;
    m.at<double>(1, 2) += a.shift_y * size;
    cv::warpAffine(out, out, m, out.size(), cv::INTER_LINEAR, cv::BORDER_REPLICATE);
  }
  if (a.light_strength != 0 || a.brightness != 1 || a.noise_sigma > 0) {
    cv::Mat f;
    out.convertTo(f, CV_32FC3);
    const double cx = std::cos(a.light_angle), cy = std::sin(a.light_angle);
    for (int y = 0; y < size; ++y) {
      cv::Vec3f* row = f.ptr<cv::Vec3f>(y);
      for (int x = 0; x < size; ++x) {
        const double g = a.brightness *
                         (1 + a.light_strength * ((x / double(size) - 0.5) * cx + (y / double(size) - 0.5) * cy));
        row[x] *= static_cast<float>(g);
      }
    }
    if (a.noise_sigma > 0) {
      cv::Mat noise(f.size(), CV_32FC3);
      cv::RNG cv_rng(a.noise_seed);
      cv_rng.fill(noise, cv::RNG::NORMAL, 0.0, a.noise_sigma);
      f += noise;
    }
    f.convertTo(out, CV_8UC3);  // saturating
  }
  if (a.blur_sigma > 0) cv::GaussianBlur(out, out, cv::Size(0, 0), a.blur_sigma);
  return out;
}

cv::Rect AuRegion(int au, const Identity& id, int size) {
  const double brow = id.eye_y - id.brow_gap;
  const double tip = id.eye_y + id.nose_length;
  const double mw = id.mouth_half_width * 1.25 + 0.05;
  double x0 = 0, y0 = 0, x1 = 1, y1 = 1;
  switch (au) {
    case 1:
    case 2: x0 = 0.5 - id.eye_dx - 0.55 * id.brow_length - 0.03;
            x1 = 0.5 + id.eye_dx + 0.55 * id.brow_length + 0.03; y0 = brow - 0.11; y1 = brow + 0.03; break;
    case 4: x0 = 0.5 - id.eye_dx - 0.55 * id.brow_length - 0.03;
            x1 = 0.5 + id.eye_dx + 0.55 * id.brow_length + 0.03; y0 = brow - 0.05; y1 = brow + 0.06; break;
    case 6: x0 = 0.5 - id.eye_dx - id.eye_half_width - 0.06; x1 = 1 - x0;
            y0 = id.eye_y - id.eye_half_height - 0.03; y1 = id.eye_y + 0.14; break;
    case 7: x0 = 0.5 - id.eye_dx - id.eye_half_width - 0.02; x1 = 1 - x0;
            y0 = id.eye_y - id.eye_half_height - 0.02; y1 = id.eye_y + id.eye_half_height + 0.02; break;
    case 9: x0 = 0.5 - 0.06; x1 = 0.5 + 0.06; y0 = id.eye_y + 0.01; y1 = tip + 0.03; break;
    case 10: x0 = 0.5 - mw; x1 = 0.5 + mw; y0 = tip - 0.01; y1 = id.mouth_y + 0.03; break;
    case 12: case 14: case 15: case 23: case 24: case 25:
      x0 = 0.5 - mw; x1 = 0.5 + mw; y0 = id.mouth_y - 0.09; y1 = id.mouth_y + 0.08; break;
    case 17: x0 = 0.5 - 0.1; x1 = 0.5 + 0.1; y0 = id.mouth_y - 0.02; y1 = id.mouth_y + 0.14; break;
    case 26: x0 = 0.5 - id.face_half_width - 0.03; x1 = 1 - x0; y0 = id.mouth_y - 0.04;
             y1 = kCenterY + id.face_half_height + 0.07; break;
    default: break;
  }
  const cv::Rect r(static_cast<int>(std::floor(x0 * size)), static_cast<int>(std::floor(y0 * size)),
                   static_cast<int>(std::ceil((x1 - x0) * size)) + 1,
                   static_cast<int>(std::ceil((y1 - y0) * size)) + 1);
  return r & cv::Rect(0, 0, size, size);
}

double OccludedShare(int au, const Identity& identity, const Appearance& a) {
  if (!a.occluder) return 0;
  constexpr int kGrid = 64;
  const cv::Rect r = AuRegion(au, identity, kGrid);
  if (r.area() == 0) return 0;
  cv::Mat mask = cv::Mat::zeros(kGrid, kGrid, CV_8U);
  cv::ellipse(mask,
              cv::RotatedRect(cv::Point2f(a.occluder_center.x * kGrid, a.occluder_center.y * kGrid),
                              cv::Size2f(2 * a.occluder_axes.width * kGrid,
                                         2 * a.occluder_axes.height * kGrid),
                              static_cast<float>(a.occluder_angle)),
              cv::Scalar(255), cv::FILLED);
  return cv::countNonZero(mask(r)) / static_cast<double>(r.area());
}

}  // namespace mal::synth
