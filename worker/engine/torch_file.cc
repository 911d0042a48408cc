// Over 400 lines on purpose: one job, reading what torch.save writes (zip and legacy archives,
// pickle protocols 2-5); the opcode table and the object model it builds are one format and read
// best in one place, with the bounds checks beside the opcodes they guard.

#include "worker/engine/torch_file.h"

#include <cstring>
#include <functional>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace mal::engine {
namespace {

// ---------------------------------------------------------------------------------------------
// A pickle virtual machine for what torch.save writes (Python's pickle format, protocols 0-5;
// opcode semantics as in CPython's Lib/pickletools.py). Objects are built as a small tree of
// shared values, so that memo entries alias the objects they name (a dict filled by SETITEMS after
// BINPUT is the same dict when fetched again by BINGET).

struct ParseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Value;
using ValuePtr = std::shared_ptr<Value>;

// A storage of the file: `numel` elements of `dtype` under `key`; its bytes are attached once read
// (zip: the record data/<key>; legacy: after the pickles). A legacy view of a storage points at
// its root with an element offset.
struct Storage {
  at::ScalarType dtype = at::kFloat;
  std::string key;
  int64_t numel = 0;
  at::Tensor data;  // 1-D, numel elements, once read
  std::shared_ptr<Storage> root;
  int64_t root_offset = 0;
};

struct Value {
  enum Kind { kNone, kBool, kInt, kFloat, kStr, kBytes, kTuple, kList, kDict, kSet, kGlobal,
              kObject, kStorage, kTensor };
  Kind kind = kNone;
  int64_t i = 0;       // kBool, kInt (an integer over 64 bits sets `big` and keeps its bytes in s)
  bool big = false;    // an integer wider than 64 bits
  double f = 0;        // kFloat
  std::string s;       // kStr, kBytes; kGlobal: "module.name"; kObject: its class
  std::vector<ValuePtr> items;                          // kTuple, kList, kSet; kObject: args
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // kDict (insertion order)
  std::shared_ptr<Storage> storage;                     // kStorage, kTensor
  int64_t offset = 0;                                   // kTensor: storage offset (elements)
  std::vector<int64_t> sizes, strides;                  // kTensor

  Value() = default;
  Value(const Value&) = delete;
  Value& operator=(const Value&) = delete;
  // Frees nested values with an explicit stack: a pickle can nest a million tuples, and the
  // implicit recursive destruction would overflow the call stack.
  ~Value() {
    std::vector<ValuePtr> pending;
    auto take = [&pending](Value& v) {
      for (ValuePtr& x : v.items) pending.push_back(std::move(x));
      for (auto& [k, x] : v.entries) {
        pending.push_back(std::move(k));
        pending.push_back(std::move(x));
      }
      v.items.clear();
      v.entries.clear();
    };
    take(*this);
    while (!pending.empty()) {
      ValuePtr p = std::move(pending.back());
      pending.pop_back();
      if (p != nullptr && p.use_count() == 1) take(*p);  // p dies here, its children later
    }
  }
};

ValuePtr Make(Value::Kind k) {
  auto v = std::make_shared<Value>();
  v->kind = k;
  return v;
}

std::string KindName(const Value& v) {
  switch (v.kind) {
    case Value::kNone: return "None";
    case Value::kBool: return "a bool";
    case Value::kInt: return "an int";
    case Value::kFloat: return "a float";
    case Value::kStr: return "a str";
    case Value::kBytes: return "bytes";
    case Value::kTuple: return absl::StrCat("a tuple of ", v.items.size());
    case Value::kList: return absl::StrCat("a list of ", v.items.size());
    case Value::kDict: return absl::StrCat("a dict of ", v.entries.size());
    case Value::kSet: return "a set";
    case Value::kGlobal: return absl::StrCat("the name ", v.s);
    case Value::kObject: return absl::StrCat("an object of class ", v.s);
    case Value::kStorage: return "a storage";
    case Value::kTensor: return "a tensor";
  }
  return "?";
}

// torch.<X>Storage -> dtype.
std::optional<at::ScalarType> StorageDtype(const std::string& global) {
  static const std::pair<const char*, at::ScalarType> kTypes[] = {
      {"torch.FloatStorage", at::kFloat},     {"torch.DoubleStorage", at::kDouble},
      {"torch.HalfStorage", at::kHalf},       {"torch.BFloat16Storage", at::kBFloat16},
      {"torch.LongStorage", at::kLong},       {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort},     {"torch.CharStorage", at::kChar},
      {"torch.ByteStorage", at::kByte},       {"torch.BoolStorage", at::kBool},
      {"torch.UntypedStorage", at::kByte},    {"torch.ComplexFloatStorage", at::kComplexFloat},
      {"torch.ComplexDoubleStorage", at::kComplexDouble},
  };
  for (const auto& [name, type] : kTypes) {
    if (global == name) return type;
  }
  return std::nullopt;
}

class Unpickler {
 public:
  // `persistent` turns a persistent id (the tuple torch.save writes for a storage) into a value.
  Unpickler(absl::string_view bytes, std::function<ValuePtr(const ValuePtr&)> persistent)
      : in_(bytes), persistent_(std::move(persistent)) {}

  // Runs from the current position to STOP; returns the object. The position then follows STOP,
  // so several pickles written one after another are read by calling Load again.
  ValuePtr Load() {
    stack_.clear();
    marks_.clear();
    memo_.clear();
    while (true) {
      const size_t at = pos_;
      const uint8_t op = U8();
      switch (op) {
        case 0x80: U8(); break;               // PROTO
        case 0x95: Read(8); break;            // FRAME (length only: we read the stream as it is)
        case '.':                             // STOP
          if (stack_.size() != 1) Fail(at, "STOP with a stack of " + std::to_string(stack_.size()));
          return stack_.back();
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '0': Pop(at); break;             // POP
        case '1': PopMark(at); break;         // POP_MARK
        case '2': Push(Top(at)); break;       // DUP
        case 'N': Push(Make(Value::kNone)); break;
        case 0x88: Push(Bool(true)); break;   // NEWTRUE
        case 0x89: Push(Bool(false)); break;  // NEWFALSE
        case 'J': Push(Int(Signed(4))); break;                   // BININT
        case 'K': Push(Int(U8())); break;                        // BININT1
        case 'M': Push(Int(Unsigned(2))); break;                 // BININT2
        case 0x8a: Push(Long(U8())); break;                      // LONG1
        case 0x8b: Push(Long(Length(4, at))); break;             // LONG4
        case 'I': Push(TextInt(Line(), at)); break;              // INT
        case 'L': Push(TextInt(Line(), at)); break;              // LONG
        case 'G': Push(BinFloat()); break;                       // BINFLOAT
        case 'F': Push(TextFloat(Line(), at)); break;            // FLOAT
        case 'X': Push(Str(Value::kStr, Length(4, at))); break;  // BINUNICODE
        case 0x8c: Push(Str(Value::kStr, U8())); break;          // SHORT_BINUNICODE
        case 0x8d: Push(Str(Value::kStr, Length(8, at))); break; // BINUNICODE8
        // Python 2 str: torch.load decodes them as text (encoding utf-8), and so do we.
        case 'T': Push(Str(Value::kStr, Length(4, at))); break;    // BINSTRING
        case 'U': Push(Str(Value::kStr, U8())); break;             // SHORT_BINSTRING
        case 'B': Push(Str(Value::kBytes, Length(4, at))); break;  // BINBYTES
        case 'C': Push(Str(Value::kBytes, U8())); break;           // SHORT_BINBYTES
        case 0x8e: Push(Str(Value::kBytes, Length(8, at))); break; // BINBYTES8
        case 0x96: Push(Str(Value::kBytes, Length(8, at))); break; // BYTEARRAY8
        case 'V': {                                                // UNICODE (raw-unicode-escape)
          auto v = Make(Value::kStr);
          v->s = std::string(Line());
          Push(v);
          break;
        }
        case 'S': {  // STRING: a quoted Python literal
          absl::string_view line = Line();
          if (line.size() < 2 || line.front() != line.back()) Fail(at, "malformed STRING");
          auto v = Make(Value::kStr);
          std::string error;
          if (!absl::CUnescape(line.substr(1, line.size() - 2), &v->s, &error)) {
            Fail(at, "malformed STRING: " + error);
          }
          Push(v);
          break;
        }
        case ')': Push(Make(Value::kTuple)); break;  // EMPTY_TUPLE
        case 0x85: case 0x86: case 0x87: {           // TUPLE1, TUPLE2, TUPLE3
          const size_t n = op - 0x84;
          if (stack_.size() < n + (marks_.empty() ? 0 : marks_.back())) {
            Fail(at, "TUPLE on a short stack");
          }
          auto t = Make(Value::kTuple);
          t->items.assign(stack_.end() - n, stack_.end());
          stack_.resize(stack_.size() - n);
          Push(t);
          break;
        }
        case 't': {  // TUPLE
          auto t = Make(Value::kTuple);
          t->items = PopMark(at);
          Push(t);
          break;
        }
        case ']': Push(Make(Value::kList)); break;  // EMPTY_LIST
        case 'l': {                                 // LIST
          auto l = Make(Value::kList);
          l->items = PopMark(at);
          Push(l);
          break;
        }
        case 'a': {  // APPEND
          ValuePtr x = Pop(at);
          Container(at, Value::kList)->items.push_back(x);
          break;
        }
        case 'e': {  // APPENDS
          std::vector<ValuePtr> xs = PopMark(at);
          auto& items = Container(at, Value::kList)->items;
          items.insert(items.end(), xs.begin(), xs.end());
          break;
        }
        case '}': Push(Make(Value::kDict)); break;  // EMPTY_DICT
        case 'd': {                                 // DICT
          auto d = Make(Value::kDict);
          SetItems(at, *d, PopMark(at));
          Push(d);
          break;
        }
        case 's': {  // SETITEM
          ValuePtr value = Pop(at), key = Pop(at);
          Container(at, Value::kDict)->entries.emplace_back(key, value);
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<ValuePtr> kv = PopMark(at);
          SetItems(at, *Container(at, Value::kDict), kv);
          break;
        }
        case 0x8f: Push(Make(Value::kSet)); break;  // EMPTY_SET
        case 0x90: {                                // ADDITEMS
          std::vector<ValuePtr> xs = PopMark(at);
          auto& items = Container(at, Value::kSet)->items;
          items.insert(items.end(), xs.begin(), xs.end());
          break;
        }
        case 0x91: {  // FROZENSET
          auto set = Make(Value::kSet);
          set->items = PopMark(at);
          Push(set);
          break;
        }
        case 'q': Memo(U8(), at); break;                  // BINPUT
        case 'r': Memo(Unsigned(4), at); break;           // LONG_BINPUT
        case 'p': Memo(TextIndex(Line(), at), at); break; // PUT
        case 0x94: Memo(memo_.size(), at); break;         // MEMOIZE
        case 'h': Push(Get(U8(), at)); break;             // BINGET
        case 'j': Push(Get(Unsigned(4), at)); break;      // LONG_BINGET
        case 'g': Push(Get(TextIndex(Line(), at), at)); break;  // GET
        case 'c': {                                       // GLOBAL
          auto g = Make(Value::kGlobal);
          const std::string module(Line());
          g->s = absl::StrCat(module, ".", Line());
          Push(g);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          ValuePtr name = Pop(at), module = Pop(at);
          if (name->kind != Value::kStr || module->kind != Value::kStr) {
            Fail(at, "STACK_GLOBAL without strings");
          }
          auto g = Make(Value::kGlobal);
          g->s = absl::StrCat(module->s, ".", name->s);
          Push(g);
          break;
        }
        case 'R': {  // REDUCE
          ValuePtr args = Pop(at), callable = Pop(at);
          if (args->kind != Value::kTuple) Fail(at, "REDUCE without an argument tuple");
          Push(Reduce(at, callable, args->items));
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args)
          ValuePtr args = Pop(at), cls = Pop(at);
          Push(Object(cls, args->items));
          break;
        }
        case 0x92: {  // NEWOBJ_EX
          Pop(at);  // kwargs
          ValuePtr args = Pop(at), cls = Pop(at);
          Push(Object(cls, args->items));
          break;
        }
        case 'b': {  // BUILD: obj.__setstate__(state); an OrderedDict's state is its _metadata
          ValuePtr state = Pop(at);
          ValuePtr obj = Top(at);
          if (obj->kind == Value::kObject) obj->items.push_back(state);
          break;
        }
        case 'Q': {  // BINPERSID
          ValuePtr pid = Pop(at);
          Push(Persistent(at, pid));
          break;
        }
        case 'P': {  // PERSID (protocol 0: the id is a string)
          auto pid = Make(Value::kStr);
          pid->s = std::string(Line());
          Push(Persistent(at, pid));
          break;
        }
        default:
          Fail(at, absl::StrCat("unsupported pickle opcode 0x", absl::Hex(op, absl::kZeroPad2)));
      }
    }
  }

  size_t position() const { return pos_; }

 private:
  [[noreturn]] void Fail(size_t at, const std::string& what) const {
    throw ParseError(absl::StrCat(what, " (pickle byte ", at, ")"));
  }
  absl::string_view Read(size_t n) {
    if (n > in_.size() - pos_) {
      throw ParseError(absl::StrCat("truncated: ", n, " bytes wanted at byte ", pos_, " of ",
                                    in_.size()));
    }
    absl::string_view out = in_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  uint8_t U8() { return static_cast<uint8_t>(Read(1)[0]); }
  uint64_t Unsigned(size_t n) {  // little-endian
    absl::string_view b = Read(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t{static_cast<uint8_t>(b[k])} << (8 * k);
    return v;
  }
  int64_t Signed(size_t n) {
    const uint64_t v = Unsigned(n);
    const uint64_t sign = uint64_t{1} << (8 * n - 1);
    return static_cast<int64_t>(n == 8 ? v : (v ^ sign) - sign);
  }
  size_t Length(size_t n, size_t at) {
    const uint64_t len = Unsigned(n);
    if (len > in_.size() - pos_) Fail(at, absl::StrCat("length ", len, " past the end"));
    return static_cast<size_t>(len);
  }
  absl::string_view Line() {
    const size_t end = in_.find('\n', pos_);
    if (end == absl::string_view::npos) throw ParseError("truncated: a text line without its end");
    absl::string_view line = in_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return line;
  }

  void Push(ValuePtr v) { stack_.push_back(std::move(v)); }
  ValuePtr Pop(size_t at) {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back())) {
      Fail(at, "pop from an empty stack");
    }
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const ValuePtr& Top(size_t at) {
    if (stack_.empty()) Fail(at, "empty stack");
    return stack_.back();
  }
  std::vector<ValuePtr> PopMark(size_t at) {
    if (marks_.empty()) Fail(at, "no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    if (m > stack_.size()) Fail(at, "MARK above the stack");
    std::vector<ValuePtr> out(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return out;
  }
  Value* Container(size_t at, Value::Kind kind) {
    const ValuePtr& v = Top(at);
    if (v->kind != kind) {
      // APPEND on a list subclass, SETITEM on a dict subclass rebuilt as an object: keep going.
      if (v->kind == Value::kObject) return v.get();
      Fail(at, "item added to " + KindName(*v));
    }
    return v.get();
  }
  void SetItems(size_t at, Value& dict, const std::vector<ValuePtr>& kv) {
    if (kv.size() % 2 != 0) Fail(at, "odd number of dict items");
    for (size_t k = 0; k < kv.size(); k += 2) dict.entries.emplace_back(kv[k], kv[k + 1]);
  }
  void Memo(uint64_t index, size_t at) { memo_[index] = Top(at); }
  ValuePtr Get(uint64_t index, size_t at) {
    auto it = memo_.find(index);
    if (it == memo_.end()) Fail(at, absl::StrCat("memo entry ", index, " not set"));
    return it->second;
  }
  static ValuePtr Bool(bool b) {
    auto v = Make(Value::kBool);
    v->i = b;
    return v;
  }
  static ValuePtr Int(int64_t i) {
    auto v = Make(Value::kInt);
    v->i = i;
    return v;
  }
  ValuePtr Long(size_t n) {
    if (n <= 8) return Int(n == 0 ? 0 : Signed(n));
    auto v = Make(Value::kInt);
    v->big = true;
    v->s = std::string(Read(n));  // little-endian two's complement
    return v;
  }
  ValuePtr TextInt(absl::string_view line, size_t at) {
    if (!line.empty() && line.back() == 'L') line.remove_suffix(1);
    if (line == "01") return Bool(true);  // protocol 0 writes True / False as INT 01 / 00
    if (line == "00") return Bool(false);
    int64_t i;
    if (absl::SimpleAtoi(line, &i)) return Int(i);
    const size_t digits = line.find_first_not_of("0123456789", line.empty() || line[0] != '-' ? 0 : 1);
    if (line.empty() || digits != absl::string_view::npos) Fail(at, absl::StrCat("bad integer '", line, "'"));
    auto v = Make(Value::kInt);  // wider than 64 bits: kept as its decimal text
    v->big = true;
    v->s = std::string(line);
    return v;
  }
  uint64_t TextIndex(absl::string_view line, size_t at) {
    uint64_t i;
    if (!absl::SimpleAtoi(line, &i)) Fail(at, absl::StrCat("bad memo index '", line, "'"));
    return i;
  }
  ValuePtr BinFloat() {  // big-endian IEEE 754 double
    absl::string_view b = Read(8);
    uint64_t bits = 0;
    for (char c : b) bits = (bits << 8) | static_cast<uint8_t>(c);
    auto v = Make(Value::kFloat);
    std::memcpy(&v->f, &bits, sizeof bits);
    return v;
  }
  ValuePtr TextFloat(absl::string_view line, size_t at) {
    auto v = Make(Value::kFloat);
    if (!absl::SimpleAtod(line, &v->f)) Fail(at, absl::StrCat("bad float '", line, "'"));
    return v;
  }
  ValuePtr Str(Value::Kind kind, size_t n) {
    auto v = Make(kind);
    v->s = std::string(Read(n));
    return v;
  }
  static ValuePtr Object(const ValuePtr& cls, std::vector<ValuePtr> args) {
    auto o = Make(Value::kObject);
    o->s = cls->kind == Value::kGlobal ? cls->s : "<unnamed>";
    o->items = std::move(args);
    return o;
  }
  ValuePtr Persistent(size_t at, const ValuePtr& pid) {
    if (!persistent_) Fail(at, "a persistent id where none is expected");
    return persistent_(pid);
  }

  std::vector<int64_t> Ints(size_t at, const ValuePtr& v, const char* what) const {
    if (v->kind != Value::kTuple && v->kind != Value::kList) {
      Fail(at, absl::StrCat("tensor ", what, " is ", KindName(*v)));
    }
    std::vector<int64_t> out;
    for (const ValuePtr& x : v->items) {
      if (x->kind != Value::kInt || x->big) Fail(at, absl::StrCat("tensor ", what, " not ints"));
      out.push_back(x->i);
    }
    return out;
  }

  ValuePtr Reduce(size_t at, const ValuePtr& callable, const std::vector<ValuePtr>& args) {
    const std::string name = callable->kind == Value::kGlobal ? callable->s : "";
    if (name == "collections.OrderedDict" || name == "builtins.dict") {
      auto d = Make(Value::kDict);
      if (!args.empty() && (args[0]->kind == Value::kList || args[0]->kind == Value::kTuple)) {
        for (const ValuePtr& pair : args[0]->items) {
          // Python 3 reduces an OrderedDict's items to tuples, Python 2 to lists.
          if ((pair->kind == Value::kTuple || pair->kind == Value::kList) && pair->items.size() == 2) {
            d->entries.emplace_back(pair->items[0], pair->items[1]);
          }
        }
      }
      return d;
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      if (args.size() < 4 || args[0]->kind != Value::kStorage || args[1]->kind != Value::kInt) {
        Fail(at, name + " with unexpected arguments");
      }
      auto t = Make(Value::kTensor);
      t->storage = args[0]->storage;
      t->offset = args[1]->i;
      t->sizes = Ints(at, args[2], "size");
      t->strides = Ints(at, args[3], "stride");
      if (t->sizes.size() != t->strides.size()) Fail(at, "tensor size and stride differ in rank");
      return t;
    }
    if (name == "torch._utils._rebuild_parameter" ||
        name == "torch._utils._rebuild_parameter_with_state") {
      if (args.empty() || args[0]->kind != Value::kTensor) Fail(at, name + " without a tensor");
      return args[0];
    }
    if (name == "torch._tensor._rebuild_from_type_v2" || name == "torch._tensor._rebuild_from_type") {
      if (args.size() < 3 || args[2]->kind != Value::kTuple) Fail(at, name + " without arguments");
      if (depth_ > 8) Fail(at, name + " nested too deeply");
      ++depth_;
      ValuePtr out = Reduce(at, args[0], args[2]->items);
      --depth_;
      return out;
    }
    // LibTorch's torch::pickle_save wraps typed containers as restore_type_tag(obj, "Dict[str, Tensor]");
    // Python's torch.load returns obj.
    if (name == "torch.jit._pickle.restore_type_tag") {
      if (args.empty()) Fail(at, name + " without an object");
      return args[0];
    }
    if (name.rfind("torch._utils._rebuild", 0) == 0) {
      Fail(at, name + " (quantized, sparse or other special tensors are not read)");
    }
    return Object(callable, args);
  }

  absl::string_view in_;
  size_t pos_ = 0;
  std::function<ValuePtr(const ValuePtr&)> persistent_;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;  // a map: indices are the writer's choice
  int depth_ = 0;                                  // nesting of _rebuild_from_type
};

// ---------------------------------------------------------------------------------------------
// Storages and the two container formats.

// ('storage', storage_type, key, location, numel[, view_metadata]) -> a storage value, one per key.
class StorageTable {
 public:
  ValuePtr Resolve(const ValuePtr& pid) {
    if (pid->kind != Value::kTuple || pid->items.size() < 5 || pid->items[0]->kind != Value::kStr ||
        pid->items[0]->s != "storage") {
      throw ParseError("a persistent id that is not a storage: " + KindName(*pid));
    }
    const auto& it = pid->items;
    if (it[1]->kind != Value::kGlobal) throw ParseError("storage type is " + KindName(*it[1]));
    std::optional<at::ScalarType> dtype = StorageDtype(it[1]->s);
    if (!dtype) throw ParseError("unsupported storage type " + it[1]->s);
    if (it[2]->kind != Value::kStr || it[4]->kind != Value::kInt || it[4]->i < 0) {
      throw ParseError("malformed storage id");
    }
    std::shared_ptr<Storage>& s = by_key_[it[2]->s];
    if (s == nullptr) {
      s = NewStorage(*dtype, it[2]->s, it[4]->i);
      order_.push_back(s);
    }
    auto v = Make(Value::kStorage);
    v->storage = s;
    // Legacy views: (view_key, offset, view_size) into the root storage.
    if (it.size() >= 6 && it[5]->kind == Value::kTuple && it[5]->items.size() == 3) {
      const auto& view = it[5]->items;
      if (view[0]->kind != Value::kStr || view[1]->kind != Value::kInt ||
          view[2]->kind != Value::kInt) {
        throw ParseError("malformed storage view");
      }
      std::shared_ptr<Storage>& vs = by_key_[view[0]->s];
      if (vs == nullptr) {
        vs = NewStorage(*dtype, view[0]->s, view[2]->i);
        vs->root = s;
        vs->root_offset = view[1]->i;
      }
      v->storage = vs;
    }
    return v;
  }
  const std::vector<std::shared_ptr<Storage>>& roots() const { return order_; }
  static std::shared_ptr<Storage> NewStorage(at::ScalarType dtype, const std::string& key,
                                             int64_t numel) {
    auto s = std::make_shared<Storage>();
    s->dtype = dtype;
    s->key = key;
    s->numel = numel;
    return s;
  }
  std::shared_ptr<Storage> Find(const std::string& key) const {
    auto it = by_key_.find(key);
    return it == by_key_.end() ? nullptr : it->second;
  }

 private:
  std::map<std::string, std::shared_ptr<Storage>> by_key_;
  std::vector<std::shared_ptr<Storage>> order_;
};

at::Tensor StorageTensor(const Storage& s, const void* bytes, size_t size) {
  const size_t element = c10::elementSize(s.dtype);
  if (static_cast<uint64_t>(s.numel) > size / element) {
    throw ParseError(absl::StrCat("storage ", s.key, " has ", size, " bytes for ", s.numel,
                                  " elements of ", element, " bytes"));
  }
  const size_t want = static_cast<size_t>(s.numel) * element;
  at::Tensor t = at::empty({s.numel}, at::TensorOptions().dtype(s.dtype));
  if (want > 0) std::memcpy(t.data_ptr(), bytes, want);
  return t;
}

at::Tensor Materialize(const Value& v) {
  const Storage* s = v.storage.get();
  int64_t base = v.offset;
  while (s->root != nullptr) {  // a legacy view: its elements must lie in its root
    if (s->root_offset < 0 || s->numel < 0 || s->root_offset > s->root->numel - s->numel ||
        __builtin_add_overflow(base, s->root_offset, &base)) {
      throw ParseError("storage view " + s->key + " outside its root storage");
    }
    s = s->root.get();
  }
  if (!s->data.defined()) throw ParseError("storage " + s->key + " has no data");
  // Every element the tensor reaches lies in its storage; sizes and strides may come from a
  // damaged file, so the arithmetic is checked.
  constexpr int64_t kMaxElements = int64_t{1} << 32;
  int64_t last = base, elements = 1;
  bool empty = false, overflow = false;
  for (size_t d = 0; d < v.sizes.size(); ++d) {
    if (v.sizes[d] < 0 || v.strides[d] < 0) throw ParseError("negative tensor size or stride");
    if (v.sizes[d] == 0) {
      empty = true;
      continue;
    }
    int64_t reach;
    overflow = overflow || __builtin_mul_overflow(v.sizes[d] - 1, v.strides[d], &reach) ||
               __builtin_add_overflow(last, reach, &last) ||
               __builtin_mul_overflow(elements, v.sizes[d], &elements);
  }
  if (!empty && (overflow || elements > kMaxElements)) {
    throw ParseError("a tensor with more than 2^32 elements (damaged sizes?)");
  }
  if (empty) return at::empty(v.sizes, at::TensorOptions().dtype(s->dtype));
  if (base < 0 || last >= s->numel) {
    throw ParseError(absl::StrCat("tensor reaches element ", last, " of storage ", s->key, " (",
                                  s->numel, " elements)"));
  }
  return s->data.as_strided(v.sizes, v.strides, base).clone(at::MemoryFormat::Contiguous);
}

// The legacy stream starts with the pickled magic number 0x1950a86a20f9469cfc6c (LONG1 with these
// 10 little-endian bytes), in whatever pickle protocol the file was written with.
constexpr absl::string_view kLegacyMagic("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
// The same number as protocols 0 and 1 write it (text LONG).
constexpr absl::string_view kLegacyMagicText("119547037146038801333356");

ValuePtr ReadZip(const std::string& path, StorageTable& table) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  if (reader.hasRecord("constants.pkl") || reader.hasRecord("code/__torch__.py")) {
    throw ParseError(
        "a TorchScript archive (torch.jit.save), not a state dict: save model.state_dict() "
        "with torch.save");
  }
  if (!reader.hasRecord("data.pkl")) throw ParseError("a zip archive without data.pkl");
  if (reader.hasRecord("byteorder")) {
    auto [data, size] = reader.getRecord("byteorder");
    if (std::string(static_cast<const char*>(data.get()), size) != "little") {
      throw ParseError("written on a big-endian machine (byteorder record); not supported");
    }
  }
  auto [data, size] = reader.getRecord("data.pkl");
  const std::string pkl(static_cast<const char*>(data.get()), size);
  Unpickler u(pkl, [&](const ValuePtr& pid) { return table.Resolve(pid); });
  ValuePtr top = u.Load();
  for (const auto& s : table.roots()) {
    const std::string record = "data/" + s->key;
    if (!reader.hasRecord(record)) throw ParseError("the archive lacks " + record);
    auto [bytes, n] = reader.getRecord(record);
    s->data = StorageTensor(*s, bytes.get(), n);
  }
  return top;
}

ValuePtr ReadLegacy(const std::string& bytes, StorageTable& table) {
  Unpickler u(bytes, [&](const ValuePtr& pid) { return table.Resolve(pid); });
  const ValuePtr magic = u.Load();
  if (magic->kind != Value::kInt || !magic->big ||
      (magic->s != kLegacyMagic && magic->s != kLegacyMagicText)) {
    throw ParseError("a pickle without torch.save's magic number");
  }
  const ValuePtr version = u.Load();  // protocol version (1001)
  if (version->kind != Value::kInt || version->i != 1001) {
    throw ParseError("legacy format with an unknown protocol version");
  }
  const ValuePtr sys_info = u.Load();
  if (sys_info->kind == Value::kDict) {
    for (const auto& [k, v] : sys_info->entries) {
      if (k->kind == Value::kStr && k->s == "little_endian" && v->kind == Value::kBool && !v->i) {
        throw ParseError("written on a big-endian machine (sys_info); not supported");
      }
    }
  }
  ValuePtr top = u.Load();
  const ValuePtr keys = u.Load();
  if (keys->kind != Value::kList) throw ParseError("legacy format without its storage key list");
  size_t pos = u.position();
  for (const ValuePtr& key : keys->items) {
    if (key->kind != Value::kStr) throw ParseError("a storage key that is not a string");
    std::shared_ptr<Storage> s = table.Find(key->s);
    if (pos + 8 > bytes.size()) throw ParseError("truncated before storage " + key->s);
    int64_t numel;
    std::memcpy(&numel, bytes.data() + pos, 8);
    pos += 8;
    const size_t element = c10::elementSize(s ? s->dtype : at::kByte);
    if (numel < 0 || static_cast<uint64_t>(numel) > (bytes.size() - pos) / element) {
      throw ParseError("truncated in storage " + key->s);
    }
    const size_t n = static_cast<size_t>(numel) * element;
    if (s != nullptr) {
      if (numel < s->numel) throw ParseError("storage " + key->s + " shorter than its tensors");
      s->data = StorageTensor(*s, bytes.data() + pos, n);
    }
    pos += n;
  }
  return top;
}

// ---------------------------------------------------------------------------------------------
// Finding the state dict.

bool IsStateDict(const Value& v) {
  if (v.kind != Value::kDict || v.entries.empty()) return false;
  for (const auto& [k, x] : v.entries) {
    if (k->kind != Value::kStr) return false;
    const bool extra = absl::EndsWith(k->s, "_extra_state");
    if (x->kind != Value::kTensor && !extra) return false;
  }
  return true;
}

std::string Describe(const Value& v) {
  if (v.kind == Value::kObject) {
    return absl::StrCat("a pickled object of class ", v.s,
                        v.s.find("torch.nn") != std::string::npos ||
                                v.s.find("models") != std::string::npos
                            ? " (torch.save(model) stores the whole module; save "
                              "model.state_dict() instead)"
                            : "");
  }
  if (v.kind != Value::kDict) return KindName(v);
  std::vector<std::string> keys;
  for (const auto& [k, x] : v.entries) {
    if (keys.size() == 8) {
      keys.push_back("...");
      break;
    }
    keys.push_back(k->kind == Value::kStr ? absl::StrCat(k->s, ": ", KindName(*x))
                                          : KindName(*k));
  }
  return absl::StrCat("a dict {", absl::StrJoin(keys, ", "), "} without a dict of tensors");
}

const Value* FindStateDict(const Value& top) {
  if (IsStateDict(top)) return &top;
  if (top.kind != Value::kDict) return nullptr;
  for (const char* key : {"state_dict", "model_state_dict", "model", "net", "network", "state"}) {
    for (const auto& [k, v] : top.entries) {
      if (k->kind == Value::kStr && k->s == key && IsStateDict(*v)) return v.get();
    }
  }
  const Value* only = nullptr;
  for (const auto& [k, v] : top.entries) {
    if (IsStateDict(*v)) {
      if (only != nullptr) return nullptr;
      only = v.get();
    }
  }
  return only;
}

std::string Head(const std::string& bytes) {
  return absl::CHexEscape(bytes.substr(0, 16));
}

}  // namespace

absl::StatusOr<std::map<std::string, at::Tensor>> ReadTorchStateDict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  // The head decides the format; the zip reader opens the file itself, so only the legacy
  // stream is read whole here.
  std::string bytes(64, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<size_t>(in.gcount()));
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": read error"));
  try {
    StorageTable table;
    ValuePtr top;
    if (absl::StartsWith(bytes, "PK\x03\x04")) {
      top = ReadZip(path, table);
    } else if ((absl::StartsWith(bytes, "\x80") &&
                bytes.find(std::string(kLegacyMagic)) < 32) ||  // PROTO, then the magic number
               absl::StartsWith(bytes, absl::StrCat("L", kLegacyMagicText))) {  // protocol 0/1
      bytes.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": read error"));
      top = ReadLegacy(bytes, table);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": not a file written by torch.save (neither its zip archive nor its legacy "
                "format); first bytes \"", Head(bytes), "\""));
    }
    const Value* dict = FindStateDict(*top);
    if (dict == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": no state dict in the file: it holds ", Describe(*top)));
    }
    std::map<std::string, at::Tensor> out;
    for (const auto& [k, v] : dict->entries) {
      if (v->kind == Value::kTensor) out[k->s] = Materialize(*v);
    }
    return out;
  } catch (const ParseError& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read as a PyTorch file: ", e.what()));
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read as a PyTorch zip archive: ",
                                                   e.what_without_backtrace()));
  } catch (const std::exception& e) {  // a backstop: bad_alloc on absurd sizes, and the like
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read as a PyTorch file: ", e.what()));
  }
}

}  // namespace mal::engine
