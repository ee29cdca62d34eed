// hwcomp host bundle C API (hwcomp_model.h) over the TVM FFI: the runner's calls
// (runner/runner.cc) behind four C functions.
#include "hwcomp_model.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

struct hwcomp_model {
  hwcomp_model(ffi::Module library, ffi::Module vm) : library(library), vm(vm) {}
  ffi::Module library;
  ffi::Module vm;
  std::string error;
};

namespace {

struct CpuAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (t->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

bool SameType(const DLDataType& a, const DLDataType& b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

void Collect(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    out->push_back(*tensor);
  } else if (auto array = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *array) Collect(item, out);
  } else {
    throw std::runtime_error("the model returned something other than tensors");
  }
}

void Fill(char* error, size_t size, const std::string& text) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, text.c_str(), size - 1);
  error[size - 1] = '\0';
}

}  // namespace

extern "C" hwcomp_model* hwcomp_model_load(const char* library_path, char* error,
                                           size_t error_size) {
  try {
    std::string path = library_path;
    if (path.find('/') == std::string::npos) path = "./" + path;  // dlopen: the file here
    ffi::Module library = ffi::Module::LoadFromFile(path);
    ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // (device type, device id, allocator) for the CPU; 2 = pooled allocator.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2,
                                                 static_cast<int>(kDLCPU), 0, 2);
    return new hwcomp_model(library, vm);
  } catch (const std::exception& e) {
    Fill(error, error_size, std::string("hwcomp_model_load: ") + e.what());
    return nullptr;
  }
}

extern "C" int hwcomp_model_run(hwcomp_model* model, const DLTensor* inputs, int num_inputs,
                                DLTensor* outputs, int num_outputs) {
  if (model == nullptr) return HWCOMP_MODEL_ERR_ARGS;
  model->error.clear();
  try {
    std::vector<ffi::Any> args;
    args.push_back(ffi::String("main"));
    for (int i = 0; i < num_inputs; ++i) {
      const DLTensor& in = inputs[i];
      if (in.strides != nullptr || in.data == nullptr) {
        model->error = "input " + std::to_string(i) + " is not a dense CPU tensor";
        return HWCOMP_MODEL_ERR_ARGS;
      }
      ffi::Tensor copy = ffi::Tensor::FromNDAlloc(
          CpuAlloc(), ffi::ShapeView(in.shape, static_cast<size_t>(in.ndim)), in.dtype,
          DLDevice{kDLCPU, 0});
      std::memcpy(copy.data_ptr(), static_cast<const char*>(in.data) + in.byte_offset,
                  ffi::GetDataSize(copy));
      args.push_back(copy);
    }
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    ffi::Any ignored;
    model->vm->GetFunction("set_input").value().CallPacked(
        views.data(), static_cast<int32_t>(views.size()), &ignored);
    model->vm->GetFunction("invoke_stateful").value()("main");
    ffi::Function get_output = model->vm->GetFunction("get_output").value();
    std::vector<ffi::Tensor> results;
    int64_t arity =
        model->vm->GetFunction("get_output_arity").value()("main").cast<int64_t>();
    if (arity < 0) {
      Collect(get_output("main"), &results);
    } else {
      for (int64_t i = 0; i < arity; ++i) Collect(get_output("main", i), &results);
    }
    if (static_cast<int>(results.size()) != num_outputs) {
      model->error = "the model has " + std::to_string(results.size()) + " outputs, " +
                     std::to_string(num_outputs) + " given";
      return HWCOMP_MODEL_ERR_ARGS;
    }
    for (int i = 0; i < num_outputs; ++i) {
      const DLTensor* got = results[i].GetDLTensorPtr();
      DLTensor& out = outputs[i];
      bool same = out.ndim == got->ndim && SameType(out.dtype, got->dtype) &&
                  out.strides == nullptr && out.data != nullptr;
      for (int d = 0; same && d < got->ndim; ++d) same = out.shape[d] == got->shape[d];
      if (!same) {
        model->error = "output " + std::to_string(i) + ": shape or dtype differs from the model's";
        return HWCOMP_MODEL_ERR_ARGS;
      }
      std::memcpy(static_cast<char*>(out.data) + out.byte_offset, got->data,
                  ffi::GetDataSize(*got));
    }
    return HWCOMP_MODEL_OK;
  } catch (const std::exception& e) {
    model->error = e.what();
    return HWCOMP_MODEL_ERR_RUN;
  }
}

extern "C" const char* hwcomp_model_error(const hwcomp_model* model) {
  return model == nullptr ? "no model" : model->error.c_str();
}

extern "C" void hwcomp_model_free(hwcomp_model* model) { delete model; }
