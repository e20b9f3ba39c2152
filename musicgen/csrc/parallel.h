// parallel_for over [0, n) on the calling thread's OpenMP team, as at::parallel_for with grain 1, minus its lazy
// per-thread setup. That setup (at::internal::lazy_init_num_threads) keeps its "done" flag in a thread_local of
// each shared library that inlines it: in ours it ran again on a thread's first kernel call and applied torch's
// process-wide default thread count to that thread. After serve.own_intra_op_threads (the decode loop keeps 2
// threads, the default for other threads is 1) it put the decode loop itself on 1 thread: 65 instead of 94 steps/s.
// Here the count is the calling thread's (torch.set_num_threads sets it), and nothing is changed.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace musicgen {

// f(begin, end) on contiguous pieces, one per thread (as torch splits); inline when there is one piece or we are
// already inside a parallel region
template <typename F>
void parallel_for(int64_t n, const F& f) {
  if (n <= 1 || omp_in_parallel() || omp_get_max_threads() == 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = std::min<int64_t>(omp_get_num_threads(), n);
    const int64_t tid = omp_get_thread_num(), chunk = (n + threads - 1) / threads;
    const int64_t begin = tid * chunk;
    if (begin < n) f(begin, std::min(n, begin + chunk));
  }
}

}  // namespace musicgen
