// hwcomp task pool: runs a TVM model library's parallel loops on threads that claim tasks
// as they come free, instead of TVM's static shares.
//
// TVM's pool gives thread i the i-th static share of each parallel loop and waits for every
// share, so a thread whose core was taken for a moment (another process, another VM on the
// host) stalls the whole region until it runs again. InstallTaskPool points the model's
// parallel launches (its __TVMBackendParallelLaunch entry) at this pool: each loop is cut
// into 4 tasks per thread, claimed by the threads, the caller included, as they come free;
// a stalled thread holds back at most the one task it claimed. On a contended 2-core VM,
// MnasNet's p99 went from 229-290 ms (TVM's pool) to 22-44 ms (onnxruntime: 23-25 ms).
//
// Use: load the model (ffi::Module::LoadFromFile("lib/model.so")), then
// hwcomp::InstallTaskPool("lib/model.so", threads). Link with -pthread (and -ldl on glibc
// before 2.34). The bundle's runner does this unless HWCOMP_TVM_POOL=1.
#pragma once

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hwcomp {

// TVM's parallel-task ABI (tvm/runtime/c_backend_api.h).
struct TVMParallelGroupEnv {
  void* sync_handle;
  int32_t num_task;
};
using ParallelLambda = int (*)(int task_id, TVMParallelGroupEnv* env, void* cdata);

// A pool whose threads claim a parallel loop's tasks dynamically (see the header comment).
class TaskPool {
 public:
  static constexpr int kTasksPerThread = 4;

  explicit TaskPool(int threads) : threads_(std::max(1, threads)) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { Work(); });
  }

  ~TaskPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  int Launch(ParallelLambda lambda, void* cdata) {
    if (in_worker_ || threads_ == 1) {  // nested or single-threaded: run it here, in one task
      TVMParallelGroupEnv env{nullptr, 1};
      return lambda(0, &env, cdata);
    }
    int tasks = threads_ * kTasksPerThread;
    lambda_ = lambda;
    cdata_ = cdata;
    env_ = TVMParallelGroupEnv{nullptr, tasks};
    error_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    uint64_t generation = generation_.load(std::memory_order_relaxed) + 1;
    // The claim counter carries the job's generation: a late thread never claims a task of
    // the next job with the last one's view.
    next_.store(generation << 32, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.store(generation, std::memory_order_release);
    }
    if (sleeping_.load(std::memory_order_acquire) > 0) wake_.notify_all();
    RunTasks(generation, tasks);
    for (int spins = 0; done_.load(std::memory_order_acquire) < tasks; ++spins) {
      if (spins > 1000) std::this_thread::yield();
    }
    return error_.load(std::memory_order_relaxed);
  }

 private:
  void RunTasks(uint64_t generation, int tasks) {
    for (;;) {
      uint64_t claim = next_.load(std::memory_order_acquire);
      do {
        if ((claim >> 32) != generation || static_cast<int>(claim & 0xffffffffu) >= tasks) return;
      } while (!next_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel));
      // The job cannot change while a claimed task is unfinished.
      int task = static_cast<int>(claim & 0xffffffffu);
      if (lambda_(task, &env_, cdata_) != 0) error_.store(-1, std::memory_order_relaxed);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  void Work() {
    in_worker_ = true;
    uint64_t seen = 0;
    for (;;) {
      uint64_t generation = generation_.load(std::memory_order_acquire);
      for (int spins = 0; generation == seen && spins < 200000; ++spins) {
        generation = generation_.load(std::memory_order_acquire);
      }
      if (generation == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleeping_.fetch_add(1, std::memory_order_acq_rel);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        sleeping_.fetch_sub(1, std::memory_order_acq_rel);
        generation = generation_.load(std::memory_order_acquire);
      }
      seen = generation;
      if (stop_.load(std::memory_order_acquire)) return;
      RunTasks(generation, env_.num_task);
    }
  }

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> next_{0};
  std::atomic<int> done_{0}, error_{0}, sleeping_{0};
  std::atomic<bool> stop_{false};
  ParallelLambda lambda_ = nullptr;
  void* cdata_ = nullptr;
  TVMParallelGroupEnv env_{nullptr, 0};
  static inline thread_local bool in_worker_ = false;  // nested launches run inline
};

// The pool the installed launcher runs on (one per process: the model calls a plain function).
inline TaskPool* installed_pool = nullptr;

inline int ParallelLaunch(ParallelLambda lambda, void* cdata, int /*num_task*/) {
  return installed_pool->Launch(lambda, cdata);
}

// Points the parallel launches of the model library at `model_path` (already loaded, e.g.
// by ffi::Module::LoadFromFile) at a task pool of `threads` threads, for the life of the
// process. Returns false, changing nothing, for one thread, a library not loaded, or a model
// that uses TVM's parallel barrier (it needs every task running at once).
inline bool InstallTaskPool(const std::string& model_path, int threads) {
  if (threads <= 1) return false;
  void* handle = dlopen(model_path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  void* launch = dlsym(handle, "__TVMBackendParallelLaunch");
  bool barrier = dlsym(handle, "__TVMBackendParallelBarrier") != nullptr;
  dlclose(handle);  // TVM's loader keeps the library loaded; this lookup holds no reference
  if (launch == nullptr || barrier) return false;
  if (installed_pool == nullptr) installed_pool = new TaskPool(threads);
  *reinterpret_cast<void**>(launch) = reinterpret_cast<void*>(&ParallelLaunch);
  return true;
}

}  // namespace hwcomp
