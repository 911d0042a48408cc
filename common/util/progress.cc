#include "common/util/progress.h"

#include <atomic>

namespace mal {

namespace {
std::atomic<int64_t> progress_count{0};
}  // namespace

void NoteProgress() { progress_count.fetch_add(1, std::memory_order_relaxed); }

int64_t ProgressCount() { return progress_count.load(std::memory_order_relaxed); }

}  // namespace mal
