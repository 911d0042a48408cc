#include "client/live_view.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/service_client.h"
#include "common/data/expression.h"

namespace mal::cli {

namespace {

std::string Clock(double seconds) {
  if (!(seconds >= 0) || seconds > 99 * 3600) return "--:--";
  const int s = static_cast<int>(seconds);
  return s >= 3600 ? absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                   : absl::StrFormat("%d:%02d", s / 60, s % 60);
}

int TerminalWidth() {
  winsize w{};
  return ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 0 ? w.ws_col : 0;
}

std::string Sample(const v1::SampleWeightEntry& s) {
  return absl::StrCat(s.id(), " ", data::ExpressionName(s.label()),
                      s.consistency() >= 0 ? absl::StrFormat(" c=%.2f", s.consistency()) : "",
                      absl::StrFormat(" w=%.3f", s.weight()));
}

}  // namespace

LiveView::LiveView(std::ostream& out, std::string title, int epochs, int runs_total)
    : out_(out), title_(std::move(title)), epochs_(std::max(1, epochs)), runs_total_(runs_total) {
  out_ << "\x1b[?25l" << std::flush;  // hide the cursor while redrawing
}

LiveView::~LiveView() {
  Draw(true);
  out_ << "\x1b[?25h" << std::flush;
}

void LiveView::Add(const v1::Event& e) {
  const auto key = std::make_pair(e.trial(), e.fold());
  auto note = [&](const std::string& text) {
    recent_.push_back(text);
    while (recent_.size() > 4) recent_.pop_front();
  };
  switch (e.body_case()) {
    case v1::Event::kPoint: {
      Run& r = runs_[key];
      r.trial = e.trial();
      r.fold = e.fold();
      const v1::TrainingPoint& p = e.point();
      if (p.iteration() < r.iteration) {
        // The run started over (a retry without a checkpoint, or halved batches after running
        // out of device memory: train.oom_retries): its epochs may have another length now.
        note(absl::StrCat(RunLabel(e.trial(), e.fold()), " started over at iteration ",
                          p.iteration(), " (attempt ", e.attempt(), ")"));
        r.StartOver();
      }
      if (p.epoch() != r.epoch) {
        if (r.epoch_start >= 0 && p.epoch() == r.epoch + 1)
          r.per_epoch = p.iteration() - r.epoch_start;
        r.epoch = p.epoch();
        r.epoch_start = p.iteration();
      }
      r.iteration = p.iteration();
      if (p.seconds() > 0) {
        r.seconds_per_it =
            r.seconds_per_it == 0 ? p.seconds() : 0.8 * r.seconds_per_it + 0.2 * p.seconds();
      }
      r.last = p;
      r.state = "RUNNING";
      break;
    }
    case v1::Event::kWeights:
      weights_ = e.weights();
      weights_of_ = RunLabel(e.trial(), e.fold());
      break;
    case v1::Event::kState:
      if (e.state().scope() == "run") {
        Run& r = runs_[key];
        r.trial = e.trial();
        r.fold = e.fold();
        r.state = e.state().state();
        if (r.state == "SUCCEEDED" || r.state == "FAILED" || r.state == "CANCELLED") r.done = true;
        if (r.state == "FAILED" || r.state == "LOST")
          note(absl::StrCat(RunLabel(e.trial(), e.fold()), " ", r.state,
                            e.state().message().empty() ? "" : ": " + e.state().message()));
      } else {
        note(FormatEvent(e));
      }
      break;
    case v1::Event::kRestart: {
      // Halved batches (train.oom_retries): announced, so the next point is no surprise.
      Run& r = runs_[key];
      r.trial = e.trial();
      r.fold = e.fold();
      r.StartOver();
      note(FormatEvent(e));
      break;
    }
    case v1::Event::kEpoch:
    case v1::Event::kTrialResult:
    case v1::Event::kEnd:
      note(FormatEvent(e));
      break;
    case v1::Event::kFoldResult:
      ++runs_done_;
      runs_[key].done = true;
      note(FormatEvent(e));
      break;
    default:
      break;
  }
}

std::vector<std::string> LiveView::Lines(int width) const {
  std::vector<std::string> lines;
  lines.push_back(absl::StrFormat("%s   fold runs done %d/%d", title_, runs_done_, runs_total_));
  for (const auto& [key, r] : runs_) {
    if (r.done || r.state != "RUNNING") continue;
    double progress = -1, eta = -1;
    if (r.per_epoch > 0) {
      const double in_epoch =
          std::min<double>(1, double(r.iteration - r.epoch_start + 1) / r.per_epoch);
      progress = std::min(1.0, (r.epoch - 1 + in_epoch) / epochs_);
      const double left = (epochs_ - r.epoch + 1 - in_epoch) * r.per_epoch;
      eta = left * r.seconds_per_it;
    }
    std::string bar = "[";
    for (int i = 0; i < 20; ++i) bar += progress >= 0 && i < progress * 20 ? '#' : '.';
    bar += "]";
    const v1::TrainingPoint& p = r.last;
    lines.push_back(absl::StrFormat(
        "%-7s ep %d/%d it %d %s %5.1f it/s ETA %s  L_au %.3f L_fe %.3f L_val %s  w_au %.3f w_fe "
        "%.3f",
        RunLabel(r.trial, r.fold), r.epoch, epochs_, r.iteration, bar,
        r.seconds_per_it > 0 ? 1 / r.seconds_per_it : 0.0, Clock(eta), p.loss_au(), p.loss_fe(),
        p.loss_val() < 0 ? "-" : absl::StrFormat("%.3f", p.loss_val()), p.mean_wn_au(),
        p.mean_wn_fe()));
  }
  if (weights_.lowest_fe_size() > 0 || weights_.highest_fe_size() > 0) {
    lines.push_back(
        absl::StrFormat("FE samples of %s at iteration %d:", weights_of_, weights_.iteration()));
    for (int i = 0; i < std::max(weights_.lowest_fe_size(), weights_.highest_fe_size()) && i < 3;
         ++i) {
      lines.push_back(
          absl::StrFormat("  lowest  %-40s  highest %s",
                          i < weights_.lowest_fe_size() ? Sample(weights_.lowest_fe(i)) : "",
                          i < weights_.highest_fe_size() ? Sample(weights_.highest_fe(i)) : ""));
    }
  }
  for (const std::string& r : recent_) lines.push_back(r);
  if (!status_.empty()) lines.push_back(status_);
  for (std::string& l : lines) {
    if (width > 1 && static_cast<int>(l.size()) >= width) l.resize(width - 1);
  }
  return lines;
}

void LiveView::Draw(bool force, std::chrono::milliseconds min_interval) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < min_interval) return;
  last_draw_ = now;
  const std::vector<std::string> lines = Lines(TerminalWidth());
  std::string text;
  if (drawn_ > 0) absl::StrAppend(&text, "\x1b[", drawn_, "A");  // back to the view's top
  for (const std::string& l : lines) absl::StrAppend(&text, "\r\x1b[2K", l, "\n");
  // A shorter view than the last: clear what is left below.
  for (int i = static_cast<int>(lines.size()); i < drawn_; ++i) text += "\r\x1b[2K\n";
  if (drawn_ > static_cast<int>(lines.size()))
    absl::StrAppend(&text, "\x1b[", drawn_ - static_cast<int>(lines.size()), "A");
  drawn_ = static_cast<int>(lines.size());
  out_ << text << std::flush;
}

}  // namespace mal::cli
