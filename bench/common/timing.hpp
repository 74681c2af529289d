// Timing, pinning and statistics of the two-process benchmark harness (shmbus-bench).
//
// Clock: the TSC (lfence + rdtsc), calibrated against CLOCK_MONOTONIC_RAW, or clock_gettime(CLOCK_MONOTONIC)
// when the TSC is not wanted. On this 2-vCPU KVM guest both advance in steps of ~10 ns and a timestamp
// costs ~20-25 ns; the loops take one stamp per sample, so each sample carries the cost of one stamp.
// The TSC is invariant and synchronised across the vCPUs here (constant_tsc, nonstop_tsc), so ticks taken
// in one process can be compared with ticks taken in another.
//
// Statistics: nearest-rank percentiles of sorted samples, and the median used to combine rounds.
#pragma once

#include <sched.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace shmbus::bench {

inline bool g_use_tsc = true;  // set before any measurement; --clock mono clears it

// A timestamp in ticks (TSC ticks, or ns with the monotonic clock).
inline std::uint64_t now_ticks() {
  if (g_use_tsc) {
    // lfence: the stamp is taken after the earlier loads (the echo we spun on) have completed.
    _mm_lfence();
    return __rdtsc();
  }
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

inline std::uint64_t raw_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

inline std::uint64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

// ns per TSC tick over a spin of `ms` milliseconds, against CLOCK_MONOTONIC_RAW.
inline double calibrate_tsc(int ms = 50) {
  const std::uint64_t n0 = raw_ns();
  const std::uint64_t t0 = __rdtsc();
  while (raw_ns() - n0 < static_cast<std::uint64_t>(ms) * 1'000'000) {
  }
  const std::uint64_t n1 = raw_ns();
  const std::uint64_t t1 = __rdtsc();
  return static_cast<double>(n1 - n0) / static_cast<double>(t1 - t0);
}

// Mean cost of one timestamp as the loops take it (back to back), in ns, over the fastest 99% of 20k pairs
// (the rest are interrupts). A mean, not a median: the guest's TSC advances in steps of ~10 ns, so single
// differences are quantised.
inline double timestamp_overhead_ns(double ns_per_tick) {
  std::vector<std::uint64_t> d(20000);
  std::uint64_t prev = now_ticks();
  for (auto& x : d) {
    const std::uint64_t t = now_ticks();
    x = t - prev;
    prev = t;
  }
  std::sort(d.begin(), d.end());
  const std::size_t keep = d.size() * 99 / 100;
  double sum = 0;
  for (std::size_t i = 0; i < keep; ++i) sum += static_cast<double>(d[i]);
  return sum / static_cast<double>(keep) * (g_use_tsc ? ns_per_tick : 1.0);
}

inline double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

inline bool pin_self(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

// Spin until f() succeeds. No pause: each side owns its CPU, and a pause would add its own latency.
template <typename F>
inline void spin_until(F&& f) {
  while (!f()) {
  }
}

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, p9999 = 0, max = 0;
};

// Nearest-rank percentile of sorted values (q in [0, 1]).
inline double pct(const std::vector<double>& sorted, double q) {
  const auto n = sorted.size();
  if (n == 0) return 0;
  auto idx = static_cast<std::size_t>(std::ceil(q * static_cast<double>(n)));
  idx = idx == 0 ? 0 : idx - 1;
  return sorted[std::min(idx, n - 1)];
}

inline Percentiles percentiles(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  return {pct(v, 0.50), pct(v, 0.90), pct(v, 0.99), pct(v, 0.999), pct(v, 0.9999), v.back()};
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

inline std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

inline std::string kernel_release() {
  utsname u{};
  ::uname(&u);
  return u.release;
}

}  // namespace shmbus::bench
