// The orchestrator: plans the groups of a suite, runs them on worker processes, and reports.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "harness/harness.hpp"

namespace shmbus::bench {

enum class Preset { full, quick, smoke };

struct Options {
  std::vector<Scenario> scenarios;
  Preset preset = Preset::full;
  // Empty: the preset's defaults.
  std::vector<u64> sizes;               // payloads (pingpong, wakeup, throughput, fanout)
  std::vector<u32> subs;                // fan-out subscriber counts
  std::vector<std::pair<u32, u32>> pc;  // queue producers x consumers
  u64 iters = 0;                        // round trips per latency point
  u32 rounds = 0;                       // interleaved rounds per group
  u64 warmup = 0;                       // unrecorded round trips before the first round
  double cap_s = 0;                     // time cap per latency point
  double round_s = 0;                   // target duration of one rate round
  u32 reclaim_reps = 0;                 // kills per reclaim mode
  std::vector<std::string> transports;  // filters: "name" or "name/mode"
  int cpu_a = 0, cpu_b = 1;
  std::string out = "shmbus-bench-out";
  bool plots = true;
  bool use_tsc = true;
  std::string command;
};

// Fills the preset's defaults into everything left empty.
void apply_preset(Options& o);
int run_suite(const Options& o);

}  // namespace shmbus::bench
