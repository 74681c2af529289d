// shmbus-bench: latency and throughput of shmbus against floors and peers, side by side in one run.
//
//   shmbus-bench SCENARIO|all [--sizes 8,64,1K,...] [--subs 1,2,4,8] [--pc 1x1,2x2,4x4] [--iters N]
//                [--rounds N] [--warmup N] [--transports a,b/mode,...] [--cpus A,B] [--out DIR]
//                [--quick|--smoke] [--no-plots] [--clock tsc|mono]
//
// Scenarios: pingpong, wakeup, throughput, fanout, queue, reclaim; `all` runs them in that order. See
// orchestrator.cpp for how groups, rounds and workers fit together, and README.md "Performance".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "harness/harness.hpp"
#include "harness/orchestrator.hpp"

namespace {

using namespace shmbus::bench;

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(
      stderr,
      "shmbus-bench: %s\n"
      "usage: shmbus-bench SCENARIO|all [options]\n"
      "  scenarios: pingpong wakeup throughput fanout queue reclaim (all: every one, in this order)\n"
      "  --sizes LIST       payloads, e.g. 8,64,1K,4K,64K,1M (fanout and queue use the first)\n"
      "  --subs LIST        fan-out subscriber counts (default 1,2,4,8)\n"
      "  --pc LIST          queue producers x consumers (default 1x1,2x2,4x4)\n"
      "  --iters N          round trips per latency point (default 100000; 64 KiB: /10, 1 MiB: /50)\n"
      "  --rounds N         interleaved rounds (default 10)\n"
      "  --warmup N         unrecorded round trips per bench before the first round (default 2000)\n"
      "  --transports LIST  only these, as name or name/mode (floors are transports too)\n"
      "  --cpus A,B         leader and follower CPUs (default 0,1)\n"
      "  --out DIR          where results.json, results.csv and the plots go (default shmbus-bench-out)\n"
      "  --quick            reduced counts: 40000 round trips, 8 rounds, 1.5 s cap per point (what\n"
      "                     scripts/bench runs by default)\n"
      "  --smoke            tiny counts, to check that everything runs (the ctest smoke test)\n"
      "  --no-plots         skip gnuplot\n"
      "  --clock tsc|mono   timestamp source (default tsc)\n",
      why.c_str());
  std::exit(64);
}

std::vector<std::string> split(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const auto c = s.find(',');
    out.emplace_back(s.substr(0, c));
    s = c == std::string_view::npos ? std::string_view{} : s.substr(c + 1);
  }
  return out;
}

u64 parse_size(const std::string& s) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  std::string suf = end;
  for (auto& ch : suf) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  u64 mul = 1;
  if (suf == "k" || suf == "kib" || suf == "kb")
    mul = 1024;
  else if (suf == "m" || suf == "mib" || suf == "mb")
    mul = 1u << 20;
  else if (!suf.empty() && suf != "b")
    usage("bad size \"" + s + "\"");
  if (v == 0 || end == s.c_str()) usage("bad size \"" + s + "\"");
  const u64 r = v * mul;
  if (r < 8 || r > (64u << 20)) usage("size " + s + " must be from 8 B to 64 MiB");
  return r;
}

u64 parse_count(const char* s) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (*end != '\0' || v == 0) usage(std::string("bad number \"") + s + "\"");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "--worker") == 0)
    return worker_main(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));
  if (argc < 2) usage("no scenario");
  Options o;
  for (int i = 0; i < argc; ++i) {
    if (i > 0) o.command += ' ';
    o.command += argv[i];
  }
  const std::string what = argv[1];
  if (what == "-h" || what == "--help") usage("help");
  if (what == "all") {
    o.scenarios = {Scenario::pingpong, Scenario::wakeup, Scenario::throughput,
                   Scenario::fanout,   Scenario::queue,  Scenario::reclaim};
  } else {
    for (const auto& s : split(what)) {
      Scenario sc;
      if (!parse_scenario(s, &sc)) usage("unknown scenario \"" + s + "\"");
      o.scenarios.push_back(sc);
    }
  }
  for (int i = 2; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(std::string(a) + " needs a value");
      return argv[++i];
    };
    if (a == "--sizes") {
      for (const auto& s : split(value())) o.sizes.push_back(parse_size(s));
    } else if (a == "--subs") {
      for (const auto& s : split(value())) {
        const u64 n = parse_count(s.c_str());
        if (n > 32) usage("at most 32 subscribers");
        o.subs.push_back(static_cast<u32>(n));
      }
    } else if (a == "--pc") {
      for (const auto& s : split(value())) {
        unsigned p = 0, c = 0;
        if (std::sscanf(s.c_str(), "%ux%u", &p, &c) != 2 || p == 0 || c == 0 || p + c > kMaxWorkers)
          usage("--pc takes PxC pairs such as 2x2 (at most " + std::to_string(kMaxWorkers) + " processes)");
        o.pc.push_back({p, c});
      }
    } else if (a == "--iters") {
      o.iters = parse_count(value());
    } else if (a == "--rounds") {
      o.rounds = static_cast<u32>(parse_count(value()));
    } else if (a == "--warmup") {
      o.warmup = parse_count(value());
    } else if (a == "--transports") {
      o.transports = split(value());
    } else if (a == "--cpus") {
      if (std::sscanf(value(), "%d,%d", &o.cpu_a, &o.cpu_b) != 2)
        usage("--cpus takes two CPU numbers, as 0,1");
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--quick") {
      o.preset = Preset::quick;
    } else if (a == "--smoke") {
      o.preset = Preset::smoke;
    } else if (a == "--no-plots") {
      o.plots = false;
    } else if (a == "--clock") {
      const std::string c = value();
      if (c != "tsc" && c != "mono") usage("--clock takes tsc or mono");
      o.use_tsc = c == "tsc";
    } else {
      usage("unknown argument \"" + std::string(a) + "\"");
    }
  }
  apply_preset(o);
  return run_suite(o);
}
