// shmbus-bench runs every scenario with tiny counts and writes well-formed results. Timing is never
// asserted: only that the files exist, parse, and carry the fields the README and the plots rely on.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#ifndef SHMBUS_BENCH_BIN
#error "SHMBUS_BENCH_BIN (path of shmbus-bench) must be defined"
#endif

namespace {

using nlohmann::json;

const std::set<std::string> kTransports = {
    "shmbus",  "floor-cacheline", "floor-ring",    "floor-futex",        "floor-eventfd",
    "pipe",    "uds-stream",      "uds-seqpacket", "posix-mq",           "boost-mq",
    "zmq-ipc", "iceoryx",         "aeron-ipc",     "aeron-ipc-exclusive"};
const std::set<std::string> kScenarios = {"pingpong", "throughput", "fanout", "queue", "wakeup", "reclaim"};
const std::vector<std::string> kRequired = {"scenario", "transport", "mode",      "payload_bytes",
                                            "p50_ns",   "p90_ns",    "p99_ns",    "p999_ns",
                                            "p9999_ns", "max_ns",    "msgs_per_s"};
const char* kCsvHeader =
    "scenario,transport,mode,payload_bytes,p50_ns,p90_ns,p99_ns,p999_ns,p9999_ns,max_ns,msgs_per_s,gbytes_"
    "per_s,"
    "x_floor,x_best_peer,floor,subscribers,producers,consumers,send_p50_ns,send_p99_ns,regime,rounds,samples,"
    "skipped,note";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Fields of one CSV line (RFC 4180 quoting).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        out.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        out.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

class BenchSmokeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/shmbus-bench-smoke-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    const std::string cmd = std::string(SHMBUS_BENCH_BIN) + " all --smoke --out '" + dir_ + "' >'" + dir_ +
                            "/stdout.txt' 2>'" + dir_ + "/stderr.txt'";
    status_ = std::system(cmd.c_str());
  }
  static void TearDownTestSuite() {
    if (!::testing::Test::HasFailure()) (void)std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  static std::string dir_;
  static int status_;
};
std::string BenchSmokeTest::dir_;
int BenchSmokeTest::status_ = -1;

TEST_F(BenchSmokeTest, ExitsZero) {
  ASSERT_TRUE(WIFEXITED(status_)) << "status " << status_;
  EXPECT_EQ(WEXITSTATUS(status_), 0) << slurp(dir_ + "/stderr.txt");
}

TEST_F(BenchSmokeTest, PrintsATablePerScenario) {
  const std::string out = slurp(dir_ + "/stdout.txt");
  for (const auto& s : kScenarios)
    EXPECT_NE(out.find("== " + s + ":"), std::string::npos) << s << "\n" << out;
  EXPECT_NE(out.find("results.json"), std::string::npos);
}

TEST_F(BenchSmokeTest, ResultsJsonRowsHaveTheFields) {
  const json rows = json::parse(slurp(dir_ + "/results.json"));
  ASSERT_TRUE(rows.is_array());
  ASSERT_FALSE(rows.empty());
  for (const json& r : rows) {
    ASSERT_TRUE(r.is_object());
    for (const auto& k : kRequired) ASSERT_TRUE(r.contains(k)) << k << " missing in " << r.dump();
    EXPECT_TRUE(r["scenario"].is_string());
    EXPECT_TRUE(kScenarios.count(r["scenario"].get<std::string>())) << r.dump();
    EXPECT_TRUE(kTransports.count(r["transport"].get<std::string>())) << r.dump();
    EXPECT_TRUE(r["mode"].is_string() && !r["mode"].get<std::string>().empty()) << r.dump();
    EXPECT_TRUE(r["payload_bytes"].is_number_unsigned()) << r.dump();
    for (const char* k : {"p50_ns", "p90_ns", "p99_ns", "p999_ns", "p9999_ns", "max_ns", "msgs_per_s"})
      EXPECT_TRUE(r[k].is_null() || r[k].is_number()) << k << " in " << r.dump();
    // A row is measured, or says why it is not.
    const bool measured = !r["p50_ns"].is_null() || !r["msgs_per_s"].is_null();
    EXPECT_TRUE(measured || (r["skipped"].is_string() && !r["skipped"].get<std::string>().empty()))
        << r.dump();
    if (!r["p50_ns"].is_null()) {
      // Medians of per-round percentiles keep their order; this checks the bookkeeping, not the speed.
      double prev = 0;
      for (const char* k : {"p50_ns", "p90_ns", "p99_ns", "p999_ns", "p9999_ns", "max_ns"}) {
        ASSERT_TRUE(r[k].is_number()) << k << " in " << r.dump();
        EXPECT_GE(r[k].get<double>(), prev) << k << " in " << r.dump();
        prev = r[k].get<double>();
      }
    }
  }
}

TEST_F(BenchSmokeTest, EveryScenarioMeasuresShmbusAndAFloor) {
  const json rows = json::parse(slurp(dir_ + "/results.json"));
  std::map<std::string, std::set<std::string>> measured;
  for (const json& r : rows)
    if (!r["p50_ns"].is_null() || !r["msgs_per_s"].is_null())
      measured[r["scenario"].get<std::string>()].insert(r["transport"].get<std::string>());
  for (const auto& s : kScenarios) {
    EXPECT_TRUE(measured[s].count("shmbus")) << s;
    if (s == "reclaim") continue;
    bool floor = false;
    for (const auto& t : measured[s]) floor = floor || t.rfind("floor-", 0) == 0;
    EXPECT_TRUE(floor) << s;
  }
}

TEST_F(BenchSmokeTest, EveryPeerIsMeasuredOrSkippedWithAReason) {
  const json rows = json::parse(slurp(dir_ + "/results.json"));
  std::set<std::string> seen;
  for (const json& r : rows)
    if (r["scenario"] == "pingpong") seen.insert(r["transport"].get<std::string>());
  for (const char* t :
       {"pipe", "uds-stream", "uds-seqpacket", "posix-mq", "boost-mq", "zmq-ipc", "iceoryx", "aeron-ipc"})
    EXPECT_TRUE(seen.count(t)) << t << " is neither measured nor listed as skipped";
  // The exclusive publication is a one-way peer.
  bool excl = false;
  for (const json& r : rows)
    excl = excl || (r["scenario"] == "throughput" && r["transport"] == "aeron-ipc-exclusive");
  EXPECT_TRUE(excl) << "aeron-ipc-exclusive is neither measured nor listed as skipped";
}

TEST_F(BenchSmokeTest, CsvHasTheHeaderAndOneLinePerRow) {
  std::ifstream f(dir_ + "/results.csv");
  std::string line;
  ASSERT_TRUE(std::getline(f, line));
  EXPECT_EQ(line, kCsvHeader);
  const std::size_t columns = csv_fields(kCsvHeader).size();
  std::size_t lines = 0;
  while (std::getline(f, line)) {
    ++lines;
    EXPECT_EQ(csv_fields(line).size(), columns) << line;
  }
  EXPECT_EQ(lines, json::parse(slurp(dir_ + "/results.json")).size());
}

TEST_F(BenchSmokeTest, MetaAndPlots) {
  const json meta = json::parse(slurp(dir_ + "/meta.json"));
  EXPECT_TRUE(meta["cpu"].is_string());
  EXPECT_TRUE(meta["kernel"].is_string());
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot not installed";
  for (const char* png : {"latency_by_payload.png", "cdf_64.png"}) {
    const std::string b = slurp(dir_ + "/" + png);
    ASSERT_GT(b.size(), 8u) << png;
    EXPECT_EQ(b.substr(1, 3), "PNG") << png;
  }
}

// The layers of the data path (`scripts/bench core`) are opt-in: absent from `all`, measured when named.
TEST(BenchLayersSmokeTest, LayersRunWhenNamedAndOnlyThen) {
  char tmpl[] = "/tmp/shmbus-bench-layers-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string cmd =
      std::string(SHMBUS_BENCH_BIN) +
      " pingpong --smoke --sizes 8,64 --transports floor-cacheline,layer-pool,layer-stream,shmbus"
      " --out '" +
      dir + "' >'" + dir + "/stdout.txt' 2>'" + dir + "/stderr.txt'";
  const int st = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << slurp(dir + "/stderr.txt");
  std::set<std::string> measured;
  for (const json& r : json::parse(slurp(dir + "/results.json")))
    if (r["skipped"].is_null() || r["skipped"] == "")
      measured.insert(r["transport"].get<std::string>() + "/" + r["mode"].get<std::string>() + "/" +
                      std::to_string(r["payload_bytes"].get<unsigned>()));
  for (const char* want : {"layer-pool/busy/8", "layer-pool/busy/64", "layer-stream/busy/8",
                           "layer-stream/busy/64", "layer-stream/zero-copy/64", "shmbus/busy/64"})
    EXPECT_TRUE(measured.count(want)) << want << " not measured:\n" << slurp(dir + "/stdout.txt");
  // Not a peer: the targets' "best peer" never names a layer.
  EXPECT_EQ(slurp(dir + "/stdout.txt").find("best peer, layer-"), std::string::npos);
  if (!::testing::Test::HasFailure()) (void)std::system(("rm -rf '" + dir + "'").c_str());
}

TEST_F(BenchSmokeTest, LayersAreOptIn) {
  for (const json& r : json::parse(slurp(dir_ + "/results.json")))
    EXPECT_NE(r["transport"].get<std::string>().rfind("layer-", 0), 0u) << r.dump();
}

}  // namespace
