#include "harness/report.hpp"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace shmbus::bench {

std::string fmt_ns(std::optional<double> ns);
std::string fmt_rate(std::optional<double> r);

namespace {

std::string sfmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string fmt_bytes(u64 b) {
  if (b >= (1u << 20) && b % (1u << 20) == 0) return std::to_string(b >> 20) + " MiB";
  if (b >= 1024 && b % 1024 == 0) return std::to_string(b >> 10) + " KiB";
  return std::to_string(b) + " B";
}

std::string fmt_ratio(std::optional<double> x) {
  if (!x) return "-";
  return *x >= 100 ? sfmt("%.0f", *x) : *x >= 10 ? sfmt("%.1f", *x) : sfmt("%.2f", *x);
}

std::string point_label(const Row& r) {
  if (r.scenario == "fanout") return std::to_string(r.subscribers) + " sub" + (r.subscribers == 1 ? "" : "s");
  if (r.scenario == "queue") return std::to_string(r.producers) + "x" + std::to_string(r.consumers);
  if (r.scenario == "reclaim") return "-";
  return fmt_bytes(r.payload);
}

const char* scenario_title(const std::string& s) {
  if (s == "pingpong") return "round trip by payload, busy-polling (two processes, pinned)";
  if (s == "wakeup") return "blocking round trip: the receiver sleeps, no spinning";
  if (s == "throughput") return "one-way stream: messages per second";
  if (s == "fanout") return "fan-out: round trip to the last of N subscribers (one process) and back";
  if (s == "queue") return "queue: P producers x C competing consumers, messages per second";
  if (s == "reclaim") return "reclaim: SIGKILL of a client holding 8 chunks -> chunks back in the pool";
  return "";
}

// Row order inside a scenario: by point, then floors, shmbus, peers in the order.
int transport_rank(const std::string& t) {
  static const char* order[] = {"floor-cacheline", "floor-ring",    "floor-futex", "floor-eventfd",
                                "layer-pool",      "layer-stream",  "shmbus",      "pipe",
                                "uds-stream",      "uds-seqpacket", "posix-mq",    "boost-mq",
                                "zmq-ipc",         "iceoryx",       "aeron-ipc",   "aeron-ipc-exclusive"};
  for (int i = 0; i < 16; ++i)
    if (t == order[i]) return i;
  return 99;
}

u64 point_key(const Row& r) {
  if (r.scenario == "fanout") return r.subscribers;
  if (r.scenario == "queue") return static_cast<u64>(r.producers) * 100 + r.consumers;
  return r.payload;
}

void print_scenario(const Report& rep, const std::string& sc, std::FILE* out) {
  std::vector<const Row*> rows, skipped;
  for (const Row& r : rep.rows)
    if (r.scenario == sc) (r.skipped.empty() ? rows : skipped).push_back(&r);
  if (rows.empty() && skipped.empty()) return;
  std::stable_sort(rows.begin(), rows.end(), [](const Row* a, const Row* b) {
    if (point_key(*a) != point_key(*b)) return point_key(*a) < point_key(*b);
    return transport_rank(a->transport) < transport_rank(b->transport);
  });
  std::fprintf(out, "\n== %s: %s ==\n", sc.c_str(), scenario_title(sc));
  const bool rate = sc == "throughput" || sc == "queue";
  std::string floor;
  for (const Row* r : rows)
    if (!r->floor.empty()) floor = r->floor;
  const char* point = sc == "fanout" ? "subs" : sc == "queue" ? "PxC" : sc == "reclaim" ? "" : "payload";
  if (rate) {
    std::fprintf(out, "%-8s %-19s %-10s %12s %9s %8s %8s  %-8s %s\n", point, "transport", "mode", "msgs/s",
                 "GB/s", "x floor", "x peer", "regime", "note");
  } else {
    std::fprintf(out, "%-8s %-19s %-10s %8s %8s %8s %8s %8s %8s %8s %7s", point, "transport", "mode", "p50",
                 "p90", "p99", "p99.9", "p99.99", "max", "x floor", "x peer");
    if (sc == "fanout") std::fprintf(out, " %9s %9s", "send p50", "send p99");
    std::fprintf(out, "  %-8s %s\n", "regime", "n");
  }
  u64 last_point = ~0ULL;
  for (const Row* r : rows) {
    if (point_key(*r) != last_point && last_point != ~0ULL) std::fprintf(out, "\n");
    last_point = point_key(*r);
    const std::string lbl = point_label(*r);
    if (rate) {
      std::fprintf(out, "%-8s %-19s %-10s %12s %9s %8s %8s  %-8s %s\n", lbl.c_str(), r->transport.c_str(),
                   r->mode.c_str(), fmt_rate(r->msgs_per_s).c_str(),
                   r->gbytes_per_s ? sfmt("%.2f", *r->gbytes_per_s).c_str() : "-",
                   fmt_ratio(r->x_floor).c_str(), fmt_ratio(r->x_peer).c_str(), r->regime.c_str(),
                   r->note.c_str());
    } else {
      std::fprintf(out, "%-8s %-19s %-10s %8s %8s %8s %8s %8s %8s %8s %7s", lbl.c_str(), r->transport.c_str(),
                   r->mode.c_str(), fmt_ns(r->p50).c_str(), fmt_ns(r->p90).c_str(), fmt_ns(r->p99).c_str(),
                   fmt_ns(r->p999).c_str(), fmt_ns(r->p9999).c_str(), fmt_ns(r->max).c_str(),
                   fmt_ratio(r->x_floor).c_str(), fmt_ratio(r->x_peer).c_str());
      if (sc == "fanout")
        std::fprintf(out, " %9s %9s", fmt_ns(r->send_p50).c_str(), fmt_ns(r->send_p99).c_str());
      std::fprintf(out, "  %-8s %llu%s%s\n", r->regime.c_str(), static_cast<unsigned long long>(r->samples),
                   r->note.empty() ? "" : "  ", r->note.c_str());
    }
  }
  if (!floor.empty())
    std::fprintf(
        out, "x floor: %s against %s in the same round (median over rounds)%s\n", rate ? "rate" : "p50",
        floor.c_str(),
        rate ? "; x peer: rate / best peer's rate (above 1 is faster)" : "; x peer: p50 / best peer's p50");
  // Skipped: one line per transport/mode and reason.
  std::map<std::pair<std::string, std::string>, std::vector<std::string>> why;
  for (const Row* r : skipped) {
    auto& v = why[{r->transport + "/" + r->mode, r->skipped}];
    v.push_back(point_label(*r));
  }
  for (const auto& [k, pts] : why) {
    std::string at;
    for (const auto& p : pts) at += (at.empty() ? "" : ", ") + p;
    std::fprintf(out, "skipped %s (%s): %s\n", k.first.c_str(), at.c_str(), k.second.c_str());
  }
}

nlohmann::json opt(std::optional<double> v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

nlohmann::json row_json(const Row& r) {
  nlohmann::json j = {
      {"scenario", r.scenario},     {"transport", r.transport},       {"mode", r.mode},
      {"payload_bytes", r.payload}, {"p50_ns", opt(r.p50)},           {"p90_ns", opt(r.p90)},
      {"p99_ns", opt(r.p99)},       {"p999_ns", opt(r.p999)},         {"p9999_ns", opt(r.p9999)},
      {"max_ns", opt(r.max)},       {"msgs_per_s", opt(r.msgs_per_s)}};
  j["gbytes_per_s"] = opt(r.gbytes_per_s);
  j["x_floor"] = opt(r.x_floor);
  j["x_best_peer"] = opt(r.x_peer);
  j["floor"] = r.floor.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.floor);
  if (r.scenario == "fanout") {
    j["subscribers"] = r.subscribers;
    j["send_p50_ns"] = opt(r.send_p50);
    j["send_p99_ns"] = opt(r.send_p99);
  }
  if (r.scenario == "queue") {
    j["producers"] = r.producers;
    j["consumers"] = r.consumers;
  }
  j["regime"] = r.regime;
  j["rounds"] = r.rounds;
  j["samples"] = r.samples;
  j["skipped"] = r.skipped.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.skipped);
  j["note"] = r.note;
  return j;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

std::string csv_num(std::optional<double> v) {
  return v ? sfmt("%.6g", *v) : std::string();
}

bool have_gnuplot() {
  return std::system("command -v gnuplot >/dev/null 2>&1") == 0;
}

std::string series_name(const std::string& t, const std::string& m) {
  return t + " " + m;
}

// The gnuplot script: inline data blocks, one series per transport/mode, each in its own colour.
void write_plot(const std::string& path, const std::string& png, const std::string& title,
                const std::string& xlabel, const std::string& ylabel, bool lines_only,
                const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series,
                const std::string& extra) {
  static const char* colors[] = {"#000000", "#7f7f7f", "#d62728", "#ff7f0e", "#e6b800", "#1f77b4",
                                 "#17becf", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"};
  std::ofstream g(path);
  for (std::size_t i = 0; i < series.size(); ++i) {
    g << "$D" << i << " << EOD\n";
    for (const auto& [x, y] : series[i].second) g << x << ' ' << y << '\n';
    g << "EOD\n";
  }
  g << "set terminal pngcairo size 1200,760 font 'sans,10'\n";
  g << "set output '" << png << "'\n";
  g << "set title '" << title << "'\n";
  g << "set xlabel '" << xlabel << "'\nset ylabel '" << ylabel << "'\n";
  g << "set grid xtics ytics mxtics mytics lc rgb '#dddddd'\nset key outside right top\n" << extra;
  g << "plot ";
  for (std::size_t i = 0; i < series.size(); ++i)
    g << (i ? ", \\\n     " : "") << "$D" << i << " using 1:2 with " << (lines_only ? "lines" : "linespoints")
      << " lw 2 pt " << (i % 13) + 1 << " lc rgb '" << colors[i % 12] << "'"
      << (series[i].first.rfind("shmbus", 0) == 0 ? " dt 1"
          : i < 4                                 ? " dt 2"
                                                  : " dt 1")
      << " title '" << series[i].first << "'";
  g << "\n";
}

// Latency tics in ns, us, ms on a log axis.
const char* kNsTics =
    "(\"10ns\" 10, \"100ns\" 100, \"1us\" 1000, \"10us\" 10000, \"100us\" 100000, \"1ms\" 1e6, \"10ms\" 1e7, "
    "\"100ms\" 1e8)";

const Row* find_row(const Report& r, const std::string& sc, const std::string& t, const std::string& m,
                    u64 payload) {
  for (const Row& x : r.rows)
    if (x.scenario == sc && x.transport == t && x.mode == m && x.payload == payload && x.skipped.empty())
      return &x;
  return nullptr;
}

std::string verdict(bool ok) {
  return ok ? "met" : "MISSED";
}

}  // namespace

bool is_peer(const std::string& t) {
  return t != "shmbus" && t.rfind("floor-", 0) != 0 && t.rfind("layer-", 0) != 0;
}
bool is_aeron(const std::string& t) {
  return t.rfind("aeron-", 0) == 0;
}

// The fastest peer row of a point (lowest p50, or highest rate); debian_only leaves Aeron out.
const Row* best_peer(const Report& r, const std::string& sc, u64 payload, bool debian_only, u32 pc = 0) {
  const Row* best = nullptr;
  for (const Row& x : r.rows) {
    if (x.scenario != sc || x.payload != payload || !x.skipped.empty() || !is_peer(x.transport)) continue;
    if (debian_only && is_aeron(x.transport)) continue;
    if (sc == "queue" && x.producers * 100 + x.consumers != pc) continue;
    if (x.rate_row() ? !x.msgs_per_s || (best != nullptr && *x.msgs_per_s <= *best->msgs_per_s)
                     : !x.p50 || (best != nullptr && *x.p50 >= *best->p50))
      continue;
    best = &x;
  }
  return best;
}

std::string name_of(const Row& x) {
  return x.transport + "/" + x.mode;
}

// Issue 8's targets for the data path (round trip, one-way, queues, fan-out, blocking), judged on this
// run's rows. Ratios against another row are ratios of the two rows' medians over rounds.
void data_path_targets(const Report& r, std::vector<std::string>& out) {
  for (const u64 size : {u64{8}, u64{64}}) {
    const Row* s = find_row(r, "pingpong", "shmbus", "busy", size);
    if (s == nullptr || !s->p50) continue;
    const std::string floor = size == 8 ? "floor-cacheline" : "floor-ring";
    const double limit = size == 8 ? 1.5 : 1.3;
    const std::string sz = std::to_string(size) + " B";
    if (const Row* f = find_row(r, "pingpong", floor, "busy", size); f && f->p50)
      out.push_back("busy round trip " + sz + " within " + sfmt("%.1f", limit) + "x of " + floor + ": " +
                    fmt_ns(s->p50) + " vs " + fmt_ns(f->p50) + " = " + fmt_ratio(*s->p50 / *f->p50) +
                    "x -> " + verdict(*s->p50 <= limit * *f->p50));
    if (const Row* b = best_peer(r, "pingpong", size, false))
      out.push_back("busy round trip " + sz + " below every peer: " + fmt_ns(s->p50) + " vs " + name_of(*b) +
                    " " + fmt_ns(b->p50) + " (" + fmt_ratio(*s->p50 / *b->p50) + "x) -> " +
                    verdict(*s->p50 < *b->p50));
  }
  for (const u64 size : {u64{8}, u64{64}}) {
    const Row* s = find_row(r, "throughput", "shmbus", "copy", size);
    if (s == nullptr || !s->msgs_per_s) continue;
    const std::string sz = std::to_string(size) + " B";
    if (s->x_floor)
      out.push_back("one-way " + sz + " at least 0.5x floor-ring: " + fmt_rate(s->msgs_per_s) + " msgs/s, " +
                    fmt_ratio(s->x_floor) + "x -> " + verdict(*s->x_floor >= 0.5));
    if (const Row* b = best_peer(r, "throughput", size, true))
      out.push_back("one-way " + sz + " at least 1.5x the best Debian peer: " +
                    fmt_ratio(*s->msgs_per_s / *b->msgs_per_s) + "x " + name_of(*b) + " (" +
                    fmt_rate(b->msgs_per_s) + ") -> " + verdict(*s->msgs_per_s >= 1.5 * *b->msgs_per_s));
    if (const Row* a = find_row(r, "throughput", "aeron-ipc", "copy", size); a && a->msgs_per_s)
      out.push_back("one-way " + sz + " at least Aeron's concurrent publication: " +
                    fmt_ratio(*s->msgs_per_s / *a->msgs_per_s) + "x (" + fmt_rate(a->msgs_per_s) + ") -> " +
                    verdict(*s->msgs_per_s >= *a->msgs_per_s));
    if (const Row* a = find_row(r, "throughput", "aeron-ipc-exclusive", "copy", size); a && a->msgs_per_s)
      out.push_back("one-way " + sz + " against Aeron's exclusive publication: " +
                    fmt_ratio(*s->msgs_per_s / *a->msgs_per_s) + "x (" + fmt_rate(a->msgs_per_s) + ")");
  }
  for (const Row& s : r.rows) {
    if (s.scenario != "queue" || s.transport != "shmbus" || !s.skipped.empty() || !s.msgs_per_s) continue;
    const u32 pc = s.producers * 100 + s.consumers;
    if (const Row* b = best_peer(r, "queue", s.payload, false, pc))
      out.push_back("queue " + std::to_string(s.producers) + "x" + std::to_string(s.consumers) + " " +
                    s.mode + " ahead of every peer: " + fmt_rate(s.msgs_per_s) + " vs " + name_of(*b) + " " +
                    fmt_rate(b->msgs_per_s) + " (" + fmt_ratio(*s.msgs_per_s / *b->msgs_per_s) + "x) -> " +
                    verdict(*s.msgs_per_s > *b->msgs_per_s));
  }
  const Row *fs = nullptr, *ff = nullptr;
  for (const Row& x : r.rows)
    if (x.scenario == "fanout" && x.subscribers == 8 && x.mode == "busy" && x.skipped.empty()) {
      if (x.transport == "shmbus") fs = &x;
      if (x.transport == "floor-ring") ff = &x;
    }
  if (fs != nullptr && ff != nullptr && fs->send_p50 && ff->send_p50 && fs->p50 && ff->p50) {
    out.push_back("fan-out to 8: time inside publish within 3x of 8 bare rings: " + fmt_ns(fs->send_p50) +
                  " vs " + fmt_ns(ff->send_p50) + " = " + fmt_ratio(*fs->send_p50 / *ff->send_p50) + "x -> " +
                  verdict(*fs->send_p50 <= 3 * *ff->send_p50));
    out.push_back("fan-out to 8: round trip to the last within 2x of the bare rings': " + fmt_ns(fs->p50) +
                  " vs " + fmt_ns(ff->p50) + " = " + fmt_ratio(*fs->p50 / *ff->p50) + "x -> " +
                  verdict(*fs->p50 <= 2 * *ff->p50));
  }
  if (const Row* b = find_row(r, "wakeup", "shmbus", "blocking", 64); b && b->x_floor)
    out.push_back("blocking round trip within 1.1x of floor-futex: " + fmt_ratio(b->x_floor) + "x (" +
                  fmt_ns(b->p50) + ") -> " + verdict(*b->x_floor <= 1.1));
}

// The design's targets (DESIGN.md "Performance targets"), judged on this run's rows.
std::vector<std::string> targets(const Report& r) {
  std::vector<std::string> out;
  if (const Row* b = find_row(r, "pingpong", "shmbus", "busy", 64); b && b->x_floor)
    out.push_back("busy-poll round trip at 64 B within 1.5x of floor-cacheline: " + fmt_ratio(b->x_floor) +
                  "x (" + fmt_ns(b->p50) + ") -> " + verdict(*b->x_floor <= 1.5));
  if (const Row* b = find_row(r, "pingpong", "shmbus", "busy", 64); b && b->p50) {
    const Row* best = nullptr;
    for (const Row& x : r.rows)
      if (x.scenario == "pingpong" && x.payload == 64 && x.skipped.empty() && x.p50 && is_peer(x.transport) &&
          (best == nullptr || *x.p50 < *best->p50))
        best = &x;
    if (best != nullptr)
      out.push_back("busy-poll round trip at 64 B below every peer: " + fmt_ns(b->p50) +
                    " vs the best peer, " + best->transport + "/" + best->mode + ", " + fmt_ns(best->p50) +
                    " (" + fmt_ratio(*b->p50 / *best->p50) + "x) -> " + verdict(*b->p50 < *best->p50));
  }
  if (const Row* b = find_row(r, "wakeup", "shmbus", "blocking", 64); b && b->x_floor)
    out.push_back("blocking round trip at 64 B within 1.2x of floor-futex: " + fmt_ratio(b->x_floor) + "x (" +
                  fmt_ns(b->p50) + ") -> " + verdict(*b->x_floor <= 1.2));
  {
    const Row* a = find_row(r, "pingpong", "shmbus", "zero-copy", 64);
    const Row* b = find_row(r, "pingpong", "shmbus", "zero-copy", 1u << 20);
    if (a && b && a->p50 && b->p50)
      out.push_back("zero-copy round trip flat from 64 B to 1 MiB (1 MiB within 2x of 64 B): " +
                    fmt_ns(a->p50) + " -> " + fmt_ns(b->p50) + " (" + fmt_ratio(*b->p50 / *a->p50) +
                    "x) -> " + verdict(*b->p50 <= 2 * *a->p50));
  }
  for (const char* m : {"copy", "zero-copy"})
    if (const Row* b = find_row(r, "throughput", "shmbus", m, 64); b && b->x_floor)
      out.push_back(std::string("one-way throughput of 64 B (") + m +
                    ") at least half of floor-ring: " + fmt_rate(b->msgs_per_s) + " msgs/s, " +
                    fmt_ratio(b->x_floor) + "x -> " + verdict(*b->x_floor >= 0.5));
  data_path_targets(r, out);
  return out;
}

std::string fmt_ns(std::optional<double> ns) {
  if (!ns) return "-";
  const double v = *ns;
  if (v < 10'000) return sfmt("%.0fns", v);
  if (v < 1'000'000) return sfmt(v < 100'000 ? "%.1fus" : "%.0fus", v / 1e3);
  if (v < 1e9) return sfmt(v < 1e8 ? "%.1fms" : "%.0fms", v / 1e6);
  return sfmt("%.2fs", v / 1e9);
}

std::string fmt_rate(std::optional<double> r) {
  if (!r) return "-";
  if (*r >= 1e6) return sfmt("%.2f M", *r / 1e6);
  if (*r >= 1e3) return sfmt("%.1f k", *r / 1e3);
  return sfmt("%.0f", *r);
}

void print_tables(const Report& r, std::FILE* out) {
  std::fprintf(out, "shmbus-bench: %s; kernel %s; %s\n", r.cpu.c_str(), r.kernel.c_str(), r.clock.c_str());
  std::vector<std::string> order = {"pingpong", "wakeup", "throughput", "fanout", "queue", "reclaim"};
  for (const auto& sc : order) print_scenario(r, sc, out);
  if (!r.notes.empty()) {
    std::fprintf(out, "\n");
    for (const auto& n : r.notes) std::fprintf(out, "note: %s\n", n.c_str());
  }
  const auto t = targets(r);
  if (!t.empty()) {
    std::fprintf(out, "\ntargets (DESIGN.md, then issue 8's), this run:\n");
    for (const auto& x : t) std::fprintf(out, "  %s\n", x.c_str());
  }
}

std::vector<std::string> write_outputs(const Report& r, const std::string& dir, bool plots,
                                       std::string* msg) {
  std::vector<std::string> wrote;
  ::mkdir(dir.c_str(), 0755);
  {
    nlohmann::json a = nlohmann::json::array();
    for (const Row& row : r.rows) a.push_back(row_json(row));
    std::ofstream(dir + "/results.json") << a.dump(1) << "\n";
    wrote.push_back(dir + "/results.json");
  }
  {
    std::ofstream c(dir + "/results.csv");
    c << "scenario,transport,mode,payload_bytes,p50_ns,p90_ns,p99_ns,p999_ns,p9999_ns,max_ns,msgs_per_s,"
         "gbytes_per_s,x_floor,x_best_peer,floor,subscribers,producers,consumers,send_p50_ns,send_p99_ns,"
         "regime,"
         "rounds,samples,skipped,note\n";
    for (const Row& x : r.rows)
      c << x.scenario << ',' << x.transport << ',' << x.mode << ',' << x.payload << ',' << csv_num(x.p50)
        << ',' << csv_num(x.p90) << ',' << csv_num(x.p99) << ',' << csv_num(x.p999) << ',' << csv_num(x.p9999)
        << ',' << csv_num(x.max) << ',' << csv_num(x.msgs_per_s) << ',' << csv_num(x.gbytes_per_s) << ','
        << csv_num(x.x_floor) << ',' << csv_num(x.x_peer) << ',' << x.floor << ',' << x.subscribers << ','
        << x.producers << ',' << x.consumers << ',' << csv_num(x.send_p50) << ',' << csv_num(x.send_p99)
        << ',' << csv_field(x.regime) << ',' << x.rounds << ',' << x.samples << ',' << csv_field(x.skipped)
        << ',' << csv_field(x.note) << '\n';
    wrote.push_back(dir + "/results.csv");
  }
  {
    nlohmann::json m = {{"cpu", r.cpu},         {"kernel", r.kernel},   {"date", r.date},
                        {"command", r.command}, {"clock", r.clock},     {"seconds", r.seconds},
                        {"notes", r.notes},     {"targets", targets(r)}};
    std::ofstream(dir + "/meta.json") << m.dump(1) << "\n";
    wrote.push_back(dir + "/meta.json");
  }
  if (!r.curves.empty()) {
    std::ofstream c(dir + "/curves.csv");
    c << "scenario,transport,mode,payload_bytes,quantile,ns\n";
    for (const Curve& cv : r.curves)
      for (const auto& [q, ns] : cv.points)
        c << cv.scenario << ',' << cv.transport << ',' << cv.mode << ',' << cv.payload << ',' << q << ','
          << ns << '\n';
    wrote.push_back(dir + "/curves.csv");
  }
  if (!plots) {
    *msg = "plots not requested (--no-plots)";
    return wrote;
  }
  if (!have_gnuplot()) {
    *msg = "gnuplot not found (apt install gnuplot-nox): no plots";
    return wrote;
  }
  std::vector<std::string> scripts;
  // Latency by payload (pingpong, and wakeup when it has several payloads), log-log.
  for (const std::string sc : {"pingpong", "wakeup"}) {
    std::map<std::string, std::vector<std::pair<double, double>>> s;
    std::vector<std::string> order;
    for (const Row& x : r.rows) {
      if (x.scenario != sc || !x.p50) continue;
      const std::string k = series_name(x.transport, x.mode);
      if (!s.count(k)) order.push_back(k);
      s[k].push_back({static_cast<double>(x.payload), *x.p50});
    }
    std::set<double> payloads;
    for (auto& [k, v] : s)
      for (auto& p : v) payloads.insert(p.first);
    if (payloads.size() < 2) continue;
    std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> series;
    for (const auto& k : order) {
      auto v = s[k];
      std::sort(v.begin(), v.end());
      series.push_back({k, v});
    }
    const std::string base = sc == "pingpong" ? "latency_by_payload" : "latency_by_payload_blocking";
    std::string xt = "set logscale x 2\nset logscale y 10\nset xtics (";
    for (double pl : payloads) {
      const auto b = static_cast<u64>(pl);
      const std::string lbl = b >= (1u << 20) ? std::to_string(b >> 20) + "M"
                              : b >= 1024     ? std::to_string(b >> 10) + "K"
                                              : std::to_string(b);
      xt += (xt.back() == '(' ? "" : ", ") + std::string("\"") + lbl + "\" " + std::to_string(b);
    }
    xt += ")\nset ytics " + std::string(kNsTics) + "\n";
    write_plot(dir + "/" + base + ".gp", dir + "/" + base + ".png",
               std::string(sc == "pingpong" ? "Round trip p50 by payload (busy-polling)"
                                            : "Blocking round trip p50 by payload") +
                   " - " + r.cpu + ", kernel " + r.kernel,
               "payload (bytes)", "round trip p50", false, series, xt);
    scripts.push_back(base);
  }
  // CDFs at 64 B.
  for (const std::string sc : {"pingpong", "wakeup"}) {
    std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> series;
    for (const Curve& cv : r.curves) {
      if (cv.scenario != sc || cv.payload != 64) continue;
      std::vector<std::pair<double, double>> pts;
      for (const auto& [q, ns] : cv.points) pts.push_back({ns, q * 100});
      series.push_back({series_name(cv.transport, cv.mode), pts});
    }
    if (series.empty()) continue;
    const std::string base = sc == "pingpong" ? "cdf_64" : "cdf_64_blocking";
    write_plot(dir + "/" + base + ".gp", dir + "/" + base + ".png",
               std::string("Round trip latency CDF at 64 B") +
                   (sc == "wakeup" ? " (blocking)" : " (busy-polling)") + " - " + r.cpu + ", kernel " +
                   r.kernel,
               "round trip", "percent of round trips at or below", true, series,
               "set logscale x 10\nset yrange [0:100]\nset xtics " + std::string(kNsTics) + "\n");
    scripts.push_back(base);
  }
  std::string failed;
  for (const auto& b : scripts) {
    const std::string cmd = "gnuplot '" + dir + "/" + b + ".gp' >'" + dir + "/" + b + ".log' 2>&1";
    if (std::system(cmd.c_str()) == 0) {
      wrote.push_back(dir + "/" + b + ".png");
    } else {
      failed += (failed.empty() ? "" : ", ") + b;
    }
  }
  if (!failed.empty()) *msg = "gnuplot failed for " + failed + " (see the .log next to each .gp)";
  return wrote;
}

}  // namespace shmbus::bench
