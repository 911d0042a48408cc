#ifndef MAL_CLIENT_LIVE_VIEW_H_
#define MAL_CLIENT_LIVE_VIEW_H_

// `malctl watch` on a terminal: one live line per fold run under way (epoch, iteration, a
// progress bar, it/s and ETA, AU / FE / validation loss, normalised mean AU and FE weight), the
// current lowest- and highest-weighted FE samples with expression and consistency, and the last
// few notable events, redrawn in place (ANSI cursor moves, lines cut to the terminal's width).

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "mal/v1/service.pb.h"

namespace mal::cli {

class LiveView {
 public:
  // `out` must be a terminal; `epochs`: the spec's train.epochs (for the bar and the ETA).
  LiveView(std::ostream& out, std::string title, int epochs, int runs_total);
  ~LiveView();  // shows the cursor again

  // Takes one event (the watch stream's, in order).
  void Add(const v1::Event& event);
  // A status line under the view (reconnects and the like).
  void Status(const std::string& text) { status_ = text; }
  // Redraws when the last draw is older than `min_interval` (or `force`).
  void Draw(bool force = false,
            std::chrono::milliseconds min_interval = std::chrono::milliseconds(200));

  // The lines the view shows now (tests; Draw writes them), each at most `width` columns.
  std::vector<std::string> Lines(int width) const;

 private:
  struct Run {
    int trial = 0, fold = 0, epoch = 0;
    int64_t iteration = 0;
    int64_t epoch_start = -1;   // the first iteration seen of the current epoch
    int64_t per_epoch = 0;      // iterations per epoch, once an epoch was seen whole
    double seconds_per_it = 0;  // moving average
    v1::TrainingPoint last;
    std::string state = "PENDING";
    bool done = false;
    // The run started over from iteration 1: its epochs may have another length now, and its
    // speed is learned again.
    void StartOver() {
      iteration = 0;
      epoch = 0;
      epoch_start = -1;
      per_epoch = 0;
      seconds_per_it = 0;
    }
  };
  std::ostream& out_;
  const std::string title_;
  const int epochs_, runs_total_;
  std::map<std::pair<int, int>, Run> runs_;
  v1::WeightSummary weights_;
  std::string weights_of_;
  std::deque<std::string> recent_;
  std::string status_;
  int runs_done_ = 0;
  int drawn_ = 0;  // lines of the last draw
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace mal::cli

#endif  // MAL_CLIENT_LIVE_VIEW_H_
