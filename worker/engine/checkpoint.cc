#include "worker/engine/checkpoint.h"

#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace mal::engine {

namespace fs = std::filesystem;

absl::Status SaveCheckpoint(const std::string& path, BaseNetImpl& model, MetaNetImpl& meta,
                            torch::optim::Optimizer& base, torch::optim::Optimizer& meta_opt,
                            const Position& p) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  try {
    torch::serialize::OutputArchive archive;
    torch::serialize::OutputArchive model_a, meta_a, base_a, meta_opt_a;
    model.save(model_a);
    meta.save(meta_a);
    base.save(base_a);
    meta_opt.save(meta_opt_a);
    archive.write("model", model_a);
    archive.write("meta", meta_a);
    archive.write("base_optimizer", base_a);
    archive.write("meta_optimizer", meta_opt_a);
    archive.write("position", torch::tensor({p.epoch, p.iter_in_epoch, p.global_iter, p.au_next,
                                             p.fe_epoch, p.fe_next, p.val_epoch, p.val_next}));
    archive.write("batches", torch::tensor({p.batches.au, p.batches.fe, p.batches.val}));
    if (!p.fe_draw.empty()) {
      archive.write("fe_draw",
                    torch::tensor(std::vector<int64_t>(p.fe_draw.begin(), p.fe_draw.end())));
    }
    archive.write("rng", at::detail::getDefaultCPUGenerator().get_state());
    archive.save_to(tmp);
  } catch (const c10::Error& e) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    return absl::DataLossError(
        absl::StrCat(path, ": cannot write checkpoint: ", e.what_without_backtrace()));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec)
    return absl::DataLossError(absl::StrCat(path, ": cannot write checkpoint: ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<Position> LoadCheckpoint(const std::string& path, BaseNetImpl& model,
                                        MetaNetImpl& meta, torch::optim::Optimizer& base,
                                        torch::optim::Optimizer& meta_opt,
                                        const torch::Device& device) {
  Position p;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path, device);
    torch::serialize::InputArchive model_a, meta_a, base_a, meta_opt_a;
    archive.read("model", model_a);
    archive.read("meta", meta_a);
    archive.read("base_optimizer", base_a);
    archive.read("meta_optimizer", meta_opt_a);
    model.load(model_a);
    meta.load(meta_a);
    base.load(base_a);
    meta_opt.load(meta_opt_a);
    torch::Tensor pos, rng;
    archive.read("position", pos);
    archive.read("rng", rng);
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(rng.to(torch::kCPU));
    pos = pos.to(torch::kCPU);
    const int64_t* v = pos.data_ptr<int64_t>();
    p = Position{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], {}, {}};
    torch::Tensor batches;
    if (archive.try_read("batches", batches) && batches.numel() == 3) {
      batches = batches.to(torch::kCPU, torch::kLong);
      const int64_t* b = batches.data_ptr<int64_t>();
      p.batches = Batches{b[0], b[1], b[2]};
    }
    torch::Tensor fe_draw;
    if (archive.try_read("fe_draw", fe_draw)) {
      fe_draw = fe_draw.to(torch::kCPU, torch::kLong);
      const int64_t* c = fe_draw.data_ptr<int64_t>();
      p.fe_draw.assign(c, c + fe_draw.numel());
    }
  } catch (const c10::OutOfMemoryError&) {
    throw;  // the device is full, the checkpoint is fine: Train's out-of-memory handling
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(path,
                                            ": cannot read checkpoint (written by another spec or "
                                            "backbone?): ",
                                            e.what_without_backtrace()));
  }
  return p;
}

absl::StatusOr<Batches> ReadCheckpointBatches(const std::string& path) {
  torch::Tensor batches;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path, torch::kCPU);
    if (!archive.try_read("batches", batches)) {
      return absl::NotFoundError(
          absl::StrCat(path, ": the checkpoint does not record its batch sizes"));
    }
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat(path, ": cannot read checkpoint: ", e.what_without_backtrace()));
  }
  if (batches.numel() != 3 || batches.scalar_type() != torch::kLong) {
    return absl::DataLossError(absl::StrCat(path, ": the checkpoint's batch sizes are malformed"));
  }
  const int64_t* b = batches.data_ptr<int64_t>();
  return Batches{b[0], b[1], b[2]};
}

}  // namespace mal::engine
