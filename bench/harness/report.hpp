// Results of a shmbus-bench run: rows, percentile curves, and how they are written (stdout table, CSV,
// results.json, gnuplot PNGs).
#pragma once

#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness/harness.hpp"

namespace shmbus::bench {

struct Row {
  std::string scenario, transport, mode;
  u64 payload = 0;
  std::optional<double> p50, p90, p99, p999, p9999, max;  // ns
  std::optional<double> msgs_per_s;
  // Beyond the required fields.
  std::optional<double> gbytes_per_s;
  std::optional<double> x_floor;  // latency: p50 / floor p50 (per cycle, median); rate: rate / floor rate
  std::optional<double> x_peer;   // latency: p50 / best peer p50; rate: rate / best peer rate
  std::optional<double> send_p50, send_p99;  // fan-out: the publisher's time inside send, ns
  std::string floor;                         // which floor x_floor refers to
  u32 subscribers = 0, producers = 0, consumers = 0;
  std::string regime;  // near / far / mixed (see the run's notes)
  u64 rounds = 0, samples = 0;
  std::string skipped;  // non-empty: not measured, and why
  std::string note;
  bool rate_row() const { return scenario == "throughput" || scenario == "queue"; }
};

struct Curve {  // pooled percentile curve of one (scenario, transport, mode) at one payload
  std::string scenario, transport, mode;
  u64 payload = 0;
  std::vector<std::pair<double, double>> points;  // (quantile in [0,1], ns)
};

struct Report {
  std::string cpu, kernel, date, command, clock;
  std::vector<std::string> notes;  // printed under the tables and kept in meta.json
  std::vector<Row> rows;
  std::vector<Curve> curves;
  double seconds = 0;
};

std::string fmt_ns(std::optional<double> ns);
std::string fmt_rate(std::optional<double> r);
void print_tables(const Report& r, std::FILE* out);
// The design's performance targets judged on this run's rows, one line each ("... -> met" or "MISSED").
std::vector<std::string> targets(const Report& r);
// Writes results.json, results.csv, meta.json, curves.csv and (with gnuplot) the plots into dir.
// Returns what it wrote, one path per entry; *msg says why plots are missing, if they are.
std::vector<std::string> write_outputs(const Report& r, const std::string& dir, bool plots, std::string* msg);

}  // namespace shmbus::bench
