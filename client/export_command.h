#ifndef MAL_CLIENT_EXPORT_COMMAND_H_
#define MAL_CLIENT_EXPORT_COMMAND_H_

// One fold run's curves as a TensorBoard event file (`malctl export --tensorboard`; the command
// itself is client/export_command.cc, added by AddExportCommand in service_client.h).

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mal::cli {

// Downloads the run's artifact `name` (records.csv, metrics.json, weights/epoch_NNN.csv) into
// `*out`. NOT_FOUND: the run has not uploaded that file (yet); anything else is a failure.
using FetchArtifact = std::function<absl::Status(const std::string& name, std::string* out)>;

// Writes one fold run's event file into `dir` (created): every records.csv row, metrics.json's
// epochs, and each epoch's weights CSV that was uploaded (tags:
// common/tensorboard/run_summaries.h). Returns the new file's path. Only once it is complete
// (written to a temporary file and renamed) are the run's earlier exports in `dir`
// (events.out.tfevents.*) removed, so a failure keeps them. Errors: NOT_FOUND when the run has no
// records.csv yet, or an empty one (nothing written, nothing removed); a download's failure other
// than NOT_FOUND (named with the file); InvalidArgument for a file that does not parse (named);
// the writer's errors (naming the path). A metrics.json that is NOT_FOUND or empty (a run in its
// first epoch, or its first after an out-of-memory restart emptied its logs) and a weights CSV
// that is NOT_FOUND (not yet uploaded, or STL's, which has no FE weights) are left out.
absl::StatusOr<std::string> ExportRun(const FetchArtifact& fetch, const std::string& dir);

}  // namespace mal::cli

#endif  // MAL_CLIENT_EXPORT_COMMAND_H_
