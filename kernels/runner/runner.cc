// hwcomp bundle runner: loads a TVM Relax executable (lib/model.so), runs it on .npy
// inputs, writes .npy outputs and prints latency statistics.
//
//   hwcomp_runner model.so [--inputs a.npy b.npy ...] [--out DIR] [--warmup N] [--repeat N]
//                 [--number N] [--times FILE]
//
// Each of the --repeat measurements times --number back-to-back runs and records their
// mean; --times writes the measurements (milliseconds, one per line).
//
// Threads: TVM_NUM_THREADS (default: one per physical core), not pinned to cores
// (TVM_BIND_THREADS=0 unless set). TVM pins each worker thread of its pool to a core of its
// own; with another process busy on one of those cores the pinned thread gets
// half of it in scheduler time slices and every parallel region waits for it at a barrier
// (MnasNet on 2 cores, one busy: median 620 ms pinned, 14 ms unpinned).
//
// Parallel loops run on the task pool of task_pool.h (threads claim tasks as they come free)
// instead of TVM's static shares; HWCOMP_TVM_POOL=1 keeps TVM's pool.
//
// Inputs are given in the model's input order. Without --inputs the runner feeds zeros of
// the shapes recorded in the executable's first call (not supported: pass inputs).
// Only the TVM FFI headers and the runtime libraries (libtvm_runtime, libtvm_ffi) are
// needed, so the same source builds for x86-64 and for aarch64 (Raspberry Pi).
#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include "task_pool.h"

namespace ffi = tvm::ffi;

namespace {

struct CpuAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (t->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct NpyDtype {
  const char* descr;
  DLDataType dl;
};

const NpyDtype kDtypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"<f2", {kDLFloat, 16, 1}}, {"<f8", {kDLFloat, 64, 1}},
    {"|i1", {kDLInt, 8, 1}},    {"|u1", {kDLUInt, 8, 1}},   {"<i2", {kDLInt, 16, 1}},
    {"<i4", {kDLInt, 32, 1}},   {"<i8", {kDLInt, 64, 1}},   {"|b1", {kDLBool, 8, 1}},
};

DLDataType DtypeFromDescr(const std::string& descr) {
  for (const auto& d : kDtypes)
    if (descr == d.descr) return d.dl;
  throw std::runtime_error("unsupported .npy dtype " + descr);
}

const char* DescrFromDtype(DLDataType t) {
  for (const auto& d : kDtypes)
    if (d.dl.code == t.code && d.dl.bits == t.bits) return d.descr;
  throw std::runtime_error("unsupported output dtype");
}

std::string HeaderField(const std::string& header, const std::string& key) {
  size_t pos = header.find("'" + key + "'");
  if (pos == std::string::npos) throw std::runtime_error(".npy header lacks " + key);
  pos = header.find(':', pos) + 1;
  while (header[pos] == ' ') ++pos;
  if (header[pos] == '(') return header.substr(pos + 1, header.find(')', pos) - pos - 1);
  if (header[pos] == '\'') return header.substr(pos + 1, header.find('\'', pos + 1) - pos - 1);
  return header.substr(pos, header.find_first_of(",}", pos) - pos);
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not .npy");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  in.read(header.data(), header_len);
  if (HeaderField(header, "fortran_order").find("True") != std::string::npos)
    throw std::runtime_error(path + " is Fortran-ordered; save it C-ordered");
  std::vector<int64_t> shape;
  std::stringstream dims(HeaderField(header, "shape"));
  for (std::string dim; std::getline(dims, dim, ',');)
    if (dim.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(dim));
  DLDataType dtype = DtypeFromDescr(HeaderField(header, "descr"));
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                           dtype, DLDevice{kDLCPU, 0});
  in.read(static_cast<char*>(t.data_ptr()), ffi::GetDataSize(t));
  if (!in) throw std::runtime_error(path + " is shorter than its header says");
  return t;
}

void WriteNpy(const std::string& path, const DLTensor* t) {
  std::ostringstream header;
  header << "{'descr': '" << DescrFromDtype(t->dtype) << "', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < t->ndim; ++i) header << t->shape[i] << (t->ndim == 1 || i + 1 < t->ndim ? ", " : "");
  header << "), }";
  std::string text = header.str();
  size_t total = 10 + text.size() + 1;
  text.append((64 - total % 64) % 64, ' ');
  text.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  uint16_t len = static_cast<uint16_t>(text.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(text.data(), text.size());
  out.write(static_cast<const char*>(t->data), ffi::GetDataSize(*t));
  if (!out) throw std::runtime_error("cannot write " + path);
}

void CollectOutputs(const ffi::Any& result, std::vector<ffi::Tensor>* outputs) {
  if (auto tensor = result.as<ffi::Tensor>()) {
    outputs->push_back(*tensor);
  } else if (auto array = result.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *array) CollectOutputs(item, outputs);
  } else {
    throw std::runtime_error("the model returned something other than tensors");
  }
}

// Physical cores: distinct (package, core) pairs of the online CPUs; logical CPUs where the
// topology cannot be read.
unsigned PhysicalCores() {
  unsigned logical = std::max(1u, std::thread::hardware_concurrency());
  std::set<std::pair<std::string, std::string>> cores;
  for (unsigned cpu = 0; cpu < logical; ++cpu) {
    std::string topology = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream package(topology + "physical_package_id"), core(topology + "core_id");
    std::string package_id, core_id;
    if (!(package >> package_id) || !(core >> core_id)) return logical;
    cores.emplace(package_id, core_id);
  }
  return static_cast<unsigned>(cores.size());
}

// TVM's thread pool takes TVM_NUM_THREADS, else OMP_NUM_THREADS, else (x86) half the logical
// CPUs, assuming two hyper-threads per core: on a machine without SMT, half the cores. Unless
// the user chose, run one thread per physical core (as hwcomp does).
const char* ThreadSetting() {
  for (const char* name : {"TVM_NUM_THREADS", "OMP_NUM_THREADS"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && *value != '\0') return value;
  }
  return nullptr;
}

void DefaultThreadCount() {
  if (ThreadSetting() == nullptr) {
    setenv("TVM_NUM_THREADS", std::to_string(PhysicalCores()).c_str(), 1);
  }
  setenv("TVM_BIND_THREADS", "0", 0);
}

// `hwcomp bench --count-instructions` runs the runner under qemu with an instruction-counting
// plugin (kernels/qemu/insn_count.c) and sets HWCOMP_COUNT_MARKS to a file name: the timed
// runs are then marked by two close() calls on descriptors that cannot exist (they fail
// with EBADF and change nothing), and the process's memory map goes to that file so
// instructions can be attributed to the model library's functions.
constexpr int kMarkStart = -48770001, kMarkStop = -48770002;

const char* CountMarks() {
  const char* path = std::getenv("HWCOMP_COUNT_MARKS");
  return path != nullptr && *path != '\0' ? path : nullptr;
}

void Mark(int descriptor) {
  if (CountMarks() != nullptr) close(descriptor);
}

void WriteMemoryMap() {
  const char* path = CountMarks();
  if (path == nullptr) return;
  std::ifstream maps("/proc/self/maps");
  std::ofstream out(path);
  out << maps.rdbuf();
  if (!out) throw std::runtime_error(std::string("cannot write ") + path);
}

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  double pos = q * (v.size() - 1);
  size_t lo = static_cast<size_t>(pos);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

int Run(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: hwcomp_runner model.so [--inputs a.npy ...] [--out DIR] "
                 "[--warmup N] [--repeat N] [--number N] [--times FILE]\n";
    return 2;
  }
  std::string model_path = argv[1];
  // dlopen searches the library path for bare names; a bundle means the file here.
  if (model_path.find('/') == std::string::npos) model_path = "./" + model_path;
  std::vector<std::string> input_paths;
  std::string out_dir;
  int warmup = 1, repeat = 10, number = 1;
  std::string times_path;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--out" && i + 1 < argc) {
      out_dir = argv[++i];
    } else if (arg == "--warmup" && i + 1 < argc) {
      warmup = std::atoi(argv[++i]);
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--number" && i + 1 < argc) {
      number = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--times" && i + 1 < argc) {
      times_path = argv[++i];
    } else if (arg == "--inputs") {
      while (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0) input_paths.push_back(argv[++i]);
    } else {
      std::cerr << "unknown argument " << arg << "\n";
      return 2;
    }
  }

  ffi::Module lib = ffi::Module::LoadFromFile(model_path);
  const char* setting = ThreadSetting();
  const char* keep_tvm_pool = std::getenv("HWCOMP_TVM_POOL");
  bool task_pool = !(keep_tvm_pool != nullptr && std::strcmp(keep_tvm_pool, "1") == 0) &&
                   hwcomp::InstallTaskPool(model_path, setting != nullptr ? std::atoi(setting) : 1);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  // (device type, device id, allocator) for the CPU; 2 = pooled allocator.
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2,
                                               static_cast<int>(kDLCPU), 0, 2);
  ffi::Function set_input = vm->GetFunction("set_input").value();
  ffi::Function invoke_stateful = vm->GetFunction("invoke_stateful").value();
  ffi::Function get_output = vm->GetFunction("get_output").value();

  std::vector<ffi::Any> packed_args;
  packed_args.push_back(ffi::String("main"));
  for (const auto& p : input_paths) packed_args.push_back(ReadNpy(p));
  std::vector<ffi::AnyView> views(packed_args.begin(), packed_args.end());
  ffi::Any ignored;
  set_input.CallPacked(views.data(), static_cast<int32_t>(views.size()), &ignored);

  for (int i = 0; i < warmup; ++i) invoke_stateful("main");
  std::vector<double> ms;
  Mark(kMarkStart);
  for (int i = 0; i < repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    for (int j = 0; j < number; ++j) invoke_stateful("main");
    auto stop = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count() / number);
  }
  Mark(kMarkStop);
  WriteMemoryMap();
  if (!times_path.empty()) {
    std::ofstream times(times_path);
    for (double t : ms) times << t << "\n";
    if (!times) throw std::runtime_error("cannot write " + times_path);
  }
  std::vector<ffi::Tensor> outputs;
  // A model with several outputs returns a tuple, which get_output hands out one by one.
  int64_t arity = vm->GetFunction("get_output_arity").value()("main").cast<int64_t>();
  if (arity < 0) {
    CollectOutputs(get_output("main"), &outputs);
  } else {
    for (int64_t i = 0; i < arity; ++i) CollectOutputs(get_output("main", i), &outputs);
  }
  if (!out_dir.empty()) {
    for (size_t i = 0; i < outputs.size(); ++i)
      WriteNpy(out_dir + "/output_" + std::to_string(i) + ".npy", outputs[i].GetDLTensorPtr());
  }
  double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size();
  std::printf("threads=%s pool=%s outputs=%zu repeat=%d min_ms=%.4f median_ms=%.4f mean_ms=%.4f "
              "p90_ms=%.4f\n",
              setting, task_pool ? "tasks" : "tvm", outputs.size(), repeat,
              *std::min_element(ms.begin(), ms.end()), Percentile(ms, 0.5), mean,
              Percentile(ms, 0.9));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  DefaultThreadCount();
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "hwcomp_runner: error: " << e.what() << "\n";
    return 1;
  }
}
