#ifndef MAL_COMMON_DATA_AU_CSV_H_
#define MAL_COMMON_DATA_AU_CSV_H_

// The per-video AU occurrence CSV shared by BP4D (AUCoding/AU_OCC) and our GFT layout: a header
// row naming the columns, a frame column ("0" or "frame") and one column per AU ("12" or "AU12").

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/data/reader.h"
#include "common/data/reader_util.h"
#include "common/data/sample.h"

namespace mal::data {

struct AuVideo {
  std::string label_file;  // the CSV
  std::string subject;
  std::string key;       // sample id prefix, e.g. "F001/T1"
  std::string split;     // copied to the samples
  std::string image_dir;  // for messages
  const FrameDirectory* images = nullptr;
};

// Appends the video's usable frames to `index` (whose `aus` are set). Columns are found by header
// name, never position. Malformed lines are skipped (error in strict mode) naming file:line;
// requested AUs without a column are masked and collected in `missing_columns`. Images are looked
// up as frame + offset, the offset (0, -1 or +1; ties go to 0) detected from the image directory
// (DetectFrameNaming) and counted in `naming_tally` when given.
absl::Status ReadAuVideoCsv(const AuVideo& video, const ReaderOptions& options, DatasetIndex& index,
                            std::map<int, std::vector<std::string>>& missing_columns,
                            FrameNamingTally* naming_tally);

}  // namespace mal::data

#endif  // MAL_COMMON_DATA_AU_CSV_H_
