// shmbus-hotpath: the client API's data path in one process, for profiling (callgrind) and for the cost of
// each layer without cross-core traffic.
//
// It starts a private broker (as shmbus-bench does), creates a stream topic (depth 8, 64-byte messages),
// subscribes and publishes in the same thread, and times N messages of each kind:
//   api-copy       Publisher::publish(bytes) + Subscriber::try_receive() + copy out + ~Sample
//   api-zero-copy  loan + 8 bytes in place + publish(loan) + try_receive() + read in place + ~Sample
// Usage: shmbus-hotpath [--iters N] [--only api-copy|api-zero-copy]
// Under callgrind, use --only with a build without -march=native (valgrind has no AVX-512):
//   valgrind --tool=callgrind shmbus-hotpath --only api-copy --iters 200000
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/timing.hpp"
#include "harness/services.hpp"
#include "shmbus/shmbus.hpp"

namespace {

using namespace shmbus;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "shmbus-hotpath: %s\n", what.c_str());
  std::exit(1);
}

double run_copy(Publisher& pub, Subscriber& sub, std::uint64_t n) {
  alignas(64) std::byte msg[64] = {}, out[64];
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    std::memcpy(msg, &i, sizeof i);
    if (!pub.publish(std::span<const std::byte>(msg, sizeof msg))) die("publish failed");
    auto s = sub.try_receive();
    if (!s) die("nothing received");
    std::memcpy(out, s->bytes().data(), s->bytes().size());
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  return ns / static_cast<double>(n);
}

double run_zero_copy(Publisher& pub, Subscriber& sub, std::uint64_t n) {
  std::uint64_t sum = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    auto loan = pub.loan(64);
    if (!loan) die("loan failed");
    std::memcpy(loan->data(), &i, sizeof i);
    if (!pub.publish(std::move(*loan))) die("publish failed");
    auto s = sub.try_receive();
    if (!s) die("nothing received");
    std::uint64_t v;
    std::memcpy(&v, s->bytes().data(), sizeof v);
    sum += v;
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  if (sum == 42) std::puts("");
  return ns / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t iters = 2'000'000;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc)
      iters = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--only" && i + 1 < argc)
      only = argv[++i];
    else
      die("usage: shmbus-hotpath [--iters N] [--only api-copy|api-zero-copy]");
  }
  char tmpl[] = "/tmp/shmbus-hotpath-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) die("mkdtemp");
  const std::string dir = tmpl;
  const std::string domain = "hp" + std::to_string(::getpid());
  ::setenv("SHMBUS_RUNTIME_DIR", dir.c_str(), 1);
  ::setenv("SHMBUS_AUTOSTART", "0", 1);
  shmbus::bench::Broker broker;
  std::string err;
  if (!broker.start(dir, domain, &err)) die(err);
  int rc = 0;
  {
    auto c = Client::connect({.domain = domain, .name = "hotpath", .autostart = false});
    if (!c) die(c.error().message());
    TopicOptions o;
    o.depth = 8;
    o.max_size = 64;
    o.max_subscribers = 1;
    if (auto st = c->create_topic("hot.path", o); !st) die(st.error().message());
    auto sub = c->subscriber("hot.path").value();
    auto pub = c->publisher("hot.path").value();
    shmbus::bench::pin_self(0);
    (void)run_copy(pub, sub, 10000);  // warm-up
    if (only.empty() || only == "api-copy")
      std::printf("api-copy       %7.1f ns per message (publish + try_receive + copy out)\n",
                  run_copy(pub, sub, iters));
    if (only.empty() || only == "api-zero-copy")
      std::printf("api-zero-copy  %7.1f ns per message (loan + publish + try_receive, in place)\n",
                  run_zero_copy(pub, sub, iters));
  }
  broker.stop();
  (void)std::system(("rm -rf '" + dir + "'").c_str());
  return rc;
}
