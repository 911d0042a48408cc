#ifndef MAL_COMMON_TENSORBOARD_RUN_SUMMARIES_H_
#define MAL_COMMON_TENSORBOARD_RUN_SUMMARIES_H_

// A fold run's curves as TensorBoard summaries, one vocabulary for `malctl export --tensorboard`
// (from the run's files) and the engine's live writer (train.tensorboard): docs/engine.md lists
// the tags.
//   loss/au, loss/fe, loss/validation          per iteration (validation: where a meta step ran)
//   task_weight/normalised_au|_fe, raw_au|_fe  per iteration (the paper's Fig. 3)
//   learning_rate/model, learning_rate/meta    per iteration
//   f1_test/AUn, f1_test/mean, f1_validation/AUn, f1_validation/mean, loss/validation_epoch,
//   sample_weight/mean_au|mean_fe|spearman_fe_weight_consistency    per epoch, at its last
//   iteration
//   fe_weight/<expression>, au_weight/all, au_meta_weight/all   histograms of the sample weights,
//   per epoch (au_meta_weight: the meta net's per-frame AU weights where training applied the AU
//   task's mean instead, mal.au_weighting task / task_in_base_step)

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "common/tensorboard/event_writer.h"
#include "mal/v1/service.pb.h"

namespace mal::tensorboard {

// One records.csv row, by column name (epoch, iteration, loss_au, loss_fe, loss_val, mean_w_au,
// mean_w_fe, mean_wn_au, mean_wn_fe, lr, meta_lr, seconds); absent or negative values are skipped
// (loss_val is -1 where no meta update ran), and meta_lr 0 (STL, MTL).
absl::Status AddIteration(EventWriter& writer, const std::map<std::string, double>& row);
// Every row of records.csv's text (header first).
absl::Status AddRecordsCsv(EventWriter& writer, const std::string& csv);
// One epoch's metrics (metrics.json's entries have EpochMetrics' field names).
absl::Status AddEpoch(EventWriter& writer, const v1::EpochMetrics& epoch);
// metrics.json's text: every epoch; returns epoch -> its last iteration (the step used).
absl::StatusOr<std::map<int, int64_t>> AddMetricsJson(EventWriter& writer, const std::string& json);
// weights/epoch_NNN.csv's text (id,task,label,consistency,weight,...,meta_weight; columns read by
// name, so files without meta_weight read too): histograms per expression, of the AU weights, and
// of the AU meta_weight where it differs from weight. Errors: InvalidArgument for a malformed CSV;
// the writer's errors.
absl::Status AddWeightsCsv(EventWriter& writer, const std::string& csv, int64_t step);

}  // namespace mal::tensorboard

#endif  // MAL_COMMON_TENSORBOARD_RUN_SUMMARIES_H_
