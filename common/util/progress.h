#ifndef MAL_COMMON_UTIL_PROGRESS_H_
#define MAL_COMMON_UTIL_PROGRESS_H_

// A process-wide count of work units done (a batch handed to the training or evaluation loop, an
// image file checked while a dataset is indexed, a synthetic image written), so that a watchdog can
// tell a slow process from a stuck one: the worker daemon kills an engine child whose count stops
// moving for --stall-timeout-s (docs/service.md). Only work that needs the run's driving thread to
// advance counts; a helper thread that merely waits never bumps it.

#include <cstdint>

namespace mal {

// One more unit of work done. Thread-safe, lock-free, a few ns.
void NoteProgress();

// Units done since the process started (never decreases). Thread-safe.
int64_t ProgressCount();

}  // namespace mal

#endif  // MAL_COMMON_UTIL_PROGRESS_H_
