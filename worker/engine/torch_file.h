#ifndef MAL_WORKER_ENGINE_TORCH_FILE_H_
#define MAL_WORKER_ENGINE_TORCH_FILE_H_

// Reads the tensors of a file written by PyTorch's torch.save, without Python and without
// LibTorch's unpickler (which asserts on OrderedDicts it did not write itself and has no
// persistent storages of the legacy format).
//
// Formats read:
//   - the zip archive of torch.save (PyTorch >= 1.6; records data.pkl and data/<key>), any pickle
//     protocol from 1 to 5;
//   - the legacy stream of torch.save(..., _use_new_zipfile_serialization=False) and of
//     PyTorch < 1.6, from Python 3 or 2 (magic number, protocol version, sys_info, the pickle,
//     the storage keys, then each storage's element count (int64) and bytes), little-endian only.
// Objects understood inside the pickle: dict, collections.OrderedDict (its `_metadata` is
// ignored), list, tuple, str, bytes, int, float, bool, None, and tensors rebuilt by
// torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter(_with_state) and
// torch._tensor._rebuild_from_type_v2 (and LibTorch's torch.jit._pickle.restore_type_tag around
// containers, as torch::pickle_save writes them), over typed storages (Float, Double, Half, BFloat16, Long,
// Int, Short, Char, Byte, Bool) or UntypedStorage, stored for any device (they load on the CPU).
// Any other class is kept as an opaque object, named in errors.

#include <map>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace mal::engine {

// The state dict of a PyTorch file: tensor name -> tensor (CPU, the file's dtype, contiguous).
//
// Where the state dict is found: the top-level object when it is a dict (plain or ordered) of
// tensors; otherwise a dict of tensors nested under "state_dict", "model_state_dict", "model",
// "net", "network" or "state" (checked in that order), or the only dict of tensors among the top
// dict's values (the usual training checkpoint {"epoch": .., "state_dict": .., "optimizer": ..}).
// A dict of tensors has string keys and tensor values, except entries named *_extra_state (which
// modules may add), which are allowed and dropped.
//
// Errors (always naming `path`): NotFound when the file cannot be opened; InvalidArgument when it
// is neither format (with its first bytes), a TorchScript archive (torch.jit.save), big-endian,
// truncated, uses a pickle opcode or a tensor constructor outside the list above, or holds no
// state dict (saying what it holds instead: a pickled module's class, a list, the dict's keys).
absl::StatusOr<std::map<std::string, at::Tensor>> ReadTorchStateDict(const std::string& path);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_TORCH_FILE_H_
