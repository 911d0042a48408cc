#include "worker/engine/evaluation.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/data/expression.h"
#include "worker/engine/mal_step.h"

namespace mal::engine {

using image::Batch;
using image::BatchLoader;

torch::Tensor Images(Batch& b, const torch::Device& device) {
  return torch::from_blob(b.images.data(), {b.size, 3, b.height, b.width}).to(device);
}
torch::Tensor AuTensor(std::vector<float>& v, int n, const torch::Device& device) {
  return torch::from_blob(v.data(), {n, static_cast<int64_t>(v.size()) / std::max(n, 1)})
      .to(device);
}

Evaluation Evaluate(BaseNetImpl& model, BatchLoader& loader, const torch::Tensor& pos_weight,
                    const torch::Device& device, int num_aus, EvaluationOutputs* outputs) {
  torch::NoGradGuard no_grad;
  model.eval();
  Evaluation e;
  e.f1 = AuF1(num_aus);
  double loss_sum = 0;
  int64_t n = 0;
  auto count_failures = [&e](const std::vector<std::string>& failures) {
    if (e.failed == 0 && !failures.empty()) e.first_failure = failures.front();
    e.failed += static_cast<int64_t>(failures.size());
  };
  loader.StartEpoch(0);
  (void)loader.TakeFailures();  // an earlier pass's, already counted there
  while (auto b = loader.Next()) {
    count_failures(b->failures);
    torch::Tensor logits = model.forward(Images(*b, device));
    torch::Tensor labels = AuTensor(b->au_labels, b->size, device);
    torch::Tensor mask = AuTensor(b->au_mask, b->size, device);
    loss_sum += RebalancedAuLoss(logits, labels, mask, pos_weight).item<double>() * b->size;
    n += b->size;
    torch::Tensor probs = torch::sigmoid(logits).to(torch::kCPU).contiguous();
    e.f1.Add(probs.data_ptr<float>(), b->au_labels.data(), b->au_mask.data(), b->size);
    if (outputs != nullptr) {
      const float* p = probs.data_ptr<float>();
      outputs->probs.insert(outputs->probs.end(), p, p + b->size * num_aus);
      outputs->labels.insert(outputs->labels.end(), b->au_labels.begin(),
                             b->au_labels.begin() + b->size * num_aus);
      outputs->mask.insert(outputs->mask.end(), b->au_mask.begin(),
                           b->au_mask.begin() + b->size * num_aus);
    }
  }
  count_failures(loader.TakeFailures());  // batches at the end of the pass that none decoded in
  e.loss = n > 0 ? loss_sum / n : 0;
  e.scored = n;
  model.train();
  return e;
}

AllWeights ComputeAllWeights(BaseNetImpl& model, MetaNetImpl& meta, BatchLoader& au_loader,
                             const data::DatasetIndex& au, BatchLoader& fe_loader,
                             const data::DatasetIndex& fe, const AlignmentSums alignment[2],
                             const torch::Device& device, bool au_task_weight,
                             const torch::Tensor& au_pos_weight, bool task_balance_fixed) {
  torch::NoGradGuard no_grad;
  model.eval();
  struct Row {
    int64_t sample;
    bool is_fe;
    double w;  // the meta net's own output for this sample
  };
  std::vector<Row> rows;
  double sum[2] = {0, 0};
  int64_t count[2] = {0, 0};
  for (int task = 0; task < 2; ++task) {
    BatchLoader& loader = task == 0 ? au_loader : fe_loader;
    loader.StartEpoch(0);
    while (auto b = loader.Next()) {
      torch::Tensor labels, loss;
      if (task == 1)
        labels = torch::from_blob(b->expressions.data(), {b->size}, torch::kLong).to(device);
      const torch::Tensor h = model.Features(Images(*b, device));
      if (meta.reads_loss()) {
        loss = task == 0
                   ? PerSampleAuLoss(model.au_head(h), AuTensor(b->au_labels, b->size, device),
                                     AuTensor(b->au_mask, b->size, device), au_pos_weight)
                   : PerSampleFeLoss(model.fe_head(h), labels);
      }
      torch::Tensor w =
          meta.forward(h, task == 0 ? MetaNetImpl::kAuTask : MetaNetImpl::kFeTask, labels, loss)
              .to(torch::kCPU)
              .to(torch::kDouble);
      for (int i = 0; i < b->size; ++i) {
        rows.push_back({b->samples[i], task == 1, w[i].item<double>()});
        sum[task] += rows.back().w;
        ++count[task];
      }
    }
  }
  model.train();
  AllWeights out;
  out.mean_au = count[0] ? sum[0] / count[0] : 0;
  out.mean_fe = count[1] ? sum[1] / count[1] : 0;
  // What training applies: with au_task_weight every AU frame gets the task's (batch) mean.
  auto applied = [&](const Row& r) { return au_task_weight && !r.is_fe ? out.mean_au : r.w; };
  // The normalisation of the real step: one s for both tasks (the paper), or each task's own mean
  // (mal.task_balance: fixed_in_base_step).
  const double s = std::max(out.mean_au + out.mean_fe, 1e-6);
  auto normaliser = [&](const Row& r) {
    if (!task_balance_fixed) return s;
    return std::max(r.is_fe ? out.mean_fe : out.mean_au, 1e-6);
  };
  out.csv = "id,task,label,consistency,weight,normalized_weight,alignment,meta_weight\n";
  std::vector<double> fe_w, fe_c;
  for (const Row& r : rows) {
    const data::Sample& x = (r.is_fe ? fe : au).samples[r.sample];
    std::string mean_alignment;  // empty: not in a meta update of this epoch
    if (auto it = alignment[r.is_fe].find(r.sample); it != alignment[r.is_fe].end()) {
      mean_alignment = absl::StrFormat("%.6g", it->second.first / it->second.second);
    }
    const double w = applied(r);
    absl::StrAppendFormat(&out.csv, "%s,%s,%s,%.4f,%.6f,%.6f,%s,%.6f\n", x.id,
                          r.is_fe ? "fe" : "au", r.is_fe ? data::ExpressionName(x.expression) : "",
                          r.is_fe ? x.consistency : -1.0, w, w / normaliser(r), mean_alignment,
                          r.w);
    if (r.is_fe && x.consistency >= 0) {
      fe_w.push_back(r.w);
      fe_c.push_back(x.consistency);
    }
  }
  out.spearman = SpearmanCorrelation(fe_w, fe_c);
  return out;
}

}  // namespace mal::engine
