// ReadTorchStateDict against files written by PyTorch itself (Debian's python3-torch, installed by
// deploy/setup.sh): every way torch.save is commonly called, each compared with the reference
// values Python printed, and the files that are not state dicts refused with mal's own message.

#include "worker/engine/torch_file.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/engine/models.h"

namespace mal::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

bool HaveTorch() {
  static const bool have = fs::exists("/usr/bin/python3") &&
                           std::system("/usr/bin/python3 -c 'import torchvision' 2>/dev/null") == 0;
  return have;
}

// One Python run writes every file (importing torch costs seconds).
class TorchFileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!HaveTorch()) return;
    dir_ = new testing::TempDir();
    const std::string d = dir_->path();
    const std::string script = absl::StrCat(R"PY(
import collections, torch, torch.serialization, torchvision
d = ')PY", d, R"PY('
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
net[1].running_mean.uniform_(-1, 1)
net[1].num_batches_tracked.fill_(7)
sd = net.state_dict()
with open(d + '/ref.txt', 'w') as f:
    for k, v in sd.items():
        f.write('%s %s %r\n' % (k, 'x'.join(map(str, v.shape)) or '-', float(v.double().sum())))
torch.save(sd, d + '/plain.pt')
torch.save(dict(sd), d + '/dict.pt')
torch.save(collections.OrderedDict((k, v) for k, v in sd.items()), d + '/ordered_copy.pt')
torch.save({'epoch': 3, 'state_dict': sd, 'optimizer': torch.optim.SGD(net.parameters(), lr=0.1).state_dict()}, d + '/checkpoint.pt')
torch.save({'model': sd, 'meta': {'arch': 'x'}}, d + '/nested_model.pt')
torch.save({'weights': sd, 'epoch': 1}, d + '/nested_other.pt')
torch.save(sd, d + '/legacy.pt', _use_new_zipfile_serialization=False)
torch.save(sd, d + '/protocol4.pt', pickle_protocol=4)
torch.save(sd, d + '/protocol5_legacy.pt', pickle_protocol=5, _use_new_zipfile_serialization=False)
torch.save(sd, d + '/protocol1.pt', pickle_protocol=1)
torch.save(sd, d + '/protocol1_legacy.pt', pickle_protocol=1, _use_new_zipfile_serialization=False)
class WithExtra(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
    def get_extra_state(self):
        return {'note': 'kept by the module'}
    def set_extra_state(self, state):
        pass
torch.save(WithExtra().state_dict(), d + '/extra_state.pt')
import pickle
header = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2) + pickle.dumps({'little_endian': True}, protocol=2)
open(d + '/hostile_mark.pt', 'wb').write(header + b'\x80\x02K\x01K\x02(\x86t.')
open(d + '/hostile_deep.pt', 'wb').write(header + b'\x80\x02K\x01' + b'\x85' * 1000000 + b'.')
torch.save(net.state_dict(keep_vars=True), d + '/parameters.pt')
torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, d + '/half.pt')
real_tag = torch.serialization.location_tag
torch.serialization.location_tag = lambda storage: 'cuda:0'
torch.save(sd, d + '/cuda.pt')
torch.serialization.location_tag = real_tag
base = torch.arange(12.).reshape(3, 4)
torch.save({'base': base, 't': base.t(), 'row': base[1], 'col': base[:, 2]}, d + '/views.pt')
torch.save({'base': base, 't': base.t(), 'row': base[1]}, d + '/views_legacy.pt', _use_new_zipfile_serialization=False)
torch.save(net, d + '/module.pt')
torch.save([sd['0.weight'], sd['0.bias']], d + '/list.pt')
torch.jit.save(torch.jit.script(net), d + '/script.pt')
torch.save({'epoch': 3, 'lr': 0.1}, d + '/no_tensors.pt')
for name in ('plain', 'legacy'):
    data = open(d + '/' + name + '.pt', 'rb').read()
    open(d + '/' + name + '_truncated.pt', 'wb').write(data[: int(len(data) * 0.6)])
)PY");
    testing::WriteText(fs::path(d) / "make.py", script);
    ASSERT_EQ(std::system(("/usr/bin/python3 " + d + "/make.py").c_str()), 0);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!HaveTorch()) GTEST_SKIP() << "python3-torch not installed (deploy/setup.sh installs it)";
  }
  static std::string File(const std::string& name) { return (fs::path(dir_->path()) / name).string(); }

  // name -> (shape "AxB" or "-", sum) as Python printed them.
  static std::map<std::string, std::pair<std::string, double>> Reference() {
    std::map<std::string, std::pair<std::string, double>> ref;
    std::ifstream in(File("ref.txt"));
    std::string name, shape;
    double sum;
    while (in >> name >> shape >> sum) ref[name] = {shape, sum};
    return ref;
  }
  static void ExpectMatchesReference(const std::string& file, double tolerance = 1e-9) {
    SCOPED_TRACE(file);
    auto sd = ReadTorchStateDict(File(file));
    ASSERT_TRUE(sd.ok()) << sd.status();
    const auto ref = Reference();
    ASSERT_EQ(sd->size(), ref.size());
    for (const auto& [name, expected] : ref) {
      ASSERT_TRUE(sd->count(name)) << name;
      const at::Tensor& t = sd->at(name);
      std::vector<std::string> dims;
      for (int64_t s : t.sizes()) dims.push_back(std::to_string(s));
      EXPECT_EQ(dims.empty() ? "-" : absl::StrJoin(dims, "x"), expected.first) << name;
      EXPECT_NEAR(t.to(torch::kDouble).sum().item<double>(), expected.second,
                  tolerance * (1 + std::abs(expected.second)))
          << name;
    }
    EXPECT_EQ(sd->at("1.num_batches_tracked").item<int64_t>(), 7);
  }

  static testing::TempDir* dir_;
};
testing::TempDir* TorchFileTest::dir_ = nullptr;

TEST_F(TorchFileTest, ReadsEveryCommonWayOfSavingAStateDict) {
  ExpectMatchesReference("plain.pt");
  ExpectMatchesReference("dict.pt");
  ExpectMatchesReference("ordered_copy.pt");  // the field report: fresh OrderedDict, no _metadata
  ExpectMatchesReference("checkpoint.pt");    // under "state_dict", beside an optimizer state
  ExpectMatchesReference("nested_model.pt");  // under "model"
  ExpectMatchesReference("nested_other.pt");  // the only dict of tensors, under another key
  ExpectMatchesReference("legacy.pt");        // _use_new_zipfile_serialization=False
  ExpectMatchesReference("protocol4.pt");     // FRAME, MEMOIZE, SHORT_BINUNICODE
  ExpectMatchesReference("protocol5_legacy.pt");
  ExpectMatchesReference("protocol1.pt");         // text opcodes: no PROTO, the magic as text LONG
  ExpectMatchesReference("protocol1_legacy.pt");
  ExpectMatchesReference("parameters.pt");    // nn.Parameter (keep_vars=True)
  ExpectMatchesReference("cuda.pt");          // stored for cuda:0, loads on the CPU
  ExpectMatchesReference("half.pt", 1e-3);    // float16 storages
  auto half = ReadTorchStateDict(File("half.pt"));
  ASSERT_TRUE(half.ok());
  EXPECT_EQ(half->at("0.weight").scalar_type(), torch::kHalf);
}

TEST_F(TorchFileTest, ExtraStateEntriesAreAllowedAndDropped) {
  auto sd = ReadTorchStateDict(File("extra_state.pt"));
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_EQ(sd->size(), 2u);  // lin.weight, lin.bias
  EXPECT_TRUE(sd->count("lin.weight"));
}

TEST_F(TorchFileTest, ViewsOfOneStorageKeepTheirOffsetsAndStrides) {
  for (const char* file : {"views.pt", "views_legacy.pt"}) {
    SCOPED_TRACE(file);
    auto sd = ReadTorchStateDict(File(file));
    ASSERT_TRUE(sd.ok()) << sd.status();
    const torch::Tensor base = torch::arange(12.).reshape({3, 4});
    EXPECT_TRUE(torch::equal(sd->at("base"), base));
    EXPECT_TRUE(torch::equal(sd->at("t"), base.t()));
    EXPECT_TRUE(torch::equal(sd->at("row"), base[1]));
    if (sd->count("col")) {
      EXPECT_TRUE(torch::equal(sd->at("col"), base.select(1, 2)));
    }
  }
}

TEST_F(TorchFileTest, WhatIsNotAStateDictIsNamedInMalsOwnWords) {
  auto expect_error = [](const std::string& file, const std::string& what) {
    SCOPED_TRACE(file);
    auto sd = ReadTorchStateDict(File(file));
    ASSERT_FALSE(sd.ok());
    const std::string msg(sd.status().message());
    EXPECT_THAT(msg, HasSubstr(File(file)));
    EXPECT_THAT(msg, HasSubstr(what));
    EXPECT_THAT(msg, Not(HasSubstr("INTERNAL ASSERT")));
  };
  expect_error("module.pt", "a pickled object of class torch.nn.modules.container.Sequential");
  expect_error("module.pt", "save model.state_dict()");
  expect_error("list.pt", "it holds a list of 2");
  expect_error("script.pt", "TorchScript archive");
  expect_error("no_tensors.pt", "a dict {epoch: an int, lr: a float} without a dict of tensors");
  expect_error("plain_truncated.pt", "cannot read");
  expect_error("legacy_truncated.pt", "truncated");
  // Hand-made hostile pickles: a TUPLE2 reaching below its MARK, a million nested tuples.
  expect_error("hostile_mark.pt", "TUPLE on a short stack");
  expect_error("hostile_deep.pt", "cannot read");
  testing::WriteText(File("junk.pt"), "not a pickle");
  expect_error("junk.pt", "not a file written by torch.save");
  EXPECT_EQ(ReadTorchStateDict(File("absent.pt")).status().code(), absl::StatusCode::kNotFound);
}

// Damaged legacy files (no checksum guards them) end in an error or a state dict, never a crash.
TEST_F(TorchFileTest, RandomlyDamagedFilesNeverCrash) {
  std::ifstream in(File("legacy.pt"), std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::mt19937 rng(3);
  int refused = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bad = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) bad[rng() % std::min<size_t>(bad.size(), 600)] = static_cast<char>(rng());
    testing::WriteText(File("damaged.pt"), bad);
    auto sd = ReadTorchStateDict(File("damaged.pt"));
    if (!sd.ok()) {
      ++refused;
      EXPECT_THAT(std::string(sd.status().message()), HasSubstr("damaged.pt"));
    }
  }
  EXPECT_GT(refused, 0);
}

// The backbone loader on top: the field reports' resnet18 files.
TEST_F(TorchFileTest, BackboneLoadsRenamedOldAndDataParallelFiles) {
  const std::string d = dir_->path();
  const std::string script = absl::StrCat(R"PY(
import collections, torch, torchvision
d = ')PY", d, R"PY('
torch.manual_seed(1)
sd = torchvision.models.resnet18().state_dict()
parallel = collections.OrderedDict(('module.' + k, v) for k, v in sd.items())
torch.save(parallel, d + '/r18_parallel.pt')
renamed = collections.OrderedDict()
for k, v in parallel.items():
    renamed[k[len('module.'):]] = v
torch.save(renamed, d + '/r18_renamed.pt')
torch.save(collections.OrderedDict((k, v) for k, v in sd.items() if not k.endswith('num_batches_tracked')), d + '/r18_old.pt')
torch.save(collections.OrderedDict((k, v) for k, v in sd.items() if k != 'bn1.running_mean'), d + '/r18_no_mean.pt')
torch.save(sd['conv1.weight'].sum(), d + '/r18_sum.pt')
with open(d + '/r18_sum.txt', 'w') as f: f.write(repr(float(sd['layer4.1.bn2.weight'].sum() + sd['conv1.weight'].sum())))
)PY");
  testing::WriteText(fs::path(d) / "make_r18.py", script);
  ASSERT_EQ(std::system(("/usr/bin/python3 " + d + "/make_r18.py").c_str()), 0);
  double expected;
  std::ifstream(File("r18_sum.txt")) >> expected;

  BaseNetImpl::Config c;
  c.backbone = "resnet18";
  for (const char* file : {"r18_renamed.pt", "r18_parallel.pt", "r18_old.pt"}) {
    SCOPED_TRACE(file);
    BaseNet net(c);
    absl::Status s = LoadPretrainedBackbone(File(file), *net);
    ASSERT_TRUE(s.ok()) << s;
    auto p = net->backbone.ptr()->named_parameters(true);
    const double got = (p["layer4.1.bn2.weight"].sum() + p["conv1.weight"].sum()).item<double>();
    EXPECT_NEAR(got, expected, 1e-4 * (1 + std::abs(expected)));
  }
  BaseNet net(c);
  absl::Status s = LoadPretrainedBackbone(File("r18_no_mean.pt"), *net);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("model tensors missing from the file (1): bn1.running_mean"));
  absl::Status scalar = LoadPretrainedBackbone(File("r18_sum.pt"), *net);
  ASSERT_FALSE(scalar.ok());
  EXPECT_THAT(std::string(scalar.message()), HasSubstr("it holds a tensor"));
}

}  // namespace
}  // namespace mal::engine
