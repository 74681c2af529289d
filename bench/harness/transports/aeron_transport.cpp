// Peer: Aeron IPC (the C client, libaeron, against the C media driver aeronmd that the orchestrator starts
// with a private aeron.dir in /dev/shm, and stops by PID). Not in Debian: configure with
// -DSHMBUS_AERON_ROOT=<an Aeron source tree built with cmake, or an install prefix> (see
// bench/CMakeLists.txt).
//
// One stream id per channel on "aeron:ipc": publications and subscriptions of a stream share one log
// buffer in the driver's directory, and the data path does not go through the driver. The fan-out
// follower holds N subscriptions of one stream. Lossless: the sender retries offer() while it reports back
// pressure (a subscription that has not read yet holds the publication back).
//
//   aeron-ipc            a concurrent publication (aeron_publication_t, several publishers may share it)
//   aeron-ipc-exclusive  an exclusive publication (one publishing thread: no CAS on the tail)
//
// The receiver polls (aeron_subscription_poll with a fragment limit): Aeron has no blocking receive (it
// waits through idle strategies), so the wake-up scenario skips it, and it has no competing consumers
// (every subscription sees every message), so the queue scenario skips it too. The one-way stream reads
// what is there in one poll (recv_batch), as Aeron's own throughput samples do.
#include <aeronc.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <type_traits>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"

namespace shmbus::bench {

namespace {

std::string aerr(const std::string& what) {
  return what + ": " + aeron_errmsg();
}

// One client per worker process, on the directory of the orchestrator's driver ($AERON_DIR, which the
// orchestrator sets before it starts the workers; aeron_context_init() reads it).
aeron_t* client(std::string* err) {
  static aeron_t* a = nullptr;
  static std::string failed;
  if (a != nullptr || !failed.empty()) {
    if (a == nullptr) *err = failed;
    return a;
  }
  aeron_context_t* ctx = nullptr;
  if (aeron_context_init(&ctx) < 0) {
    failed = aerr("aeron_context_init");
  } else if (aeron_init(&a, ctx) < 0) {
    const char* dir = std::getenv("AERON_DIR");
    failed = aerr(std::string("aeron_init (is a driver running in ") +
                  (dir != nullptr ? dir : "the default directory") + "?)");
    a = nullptr;
  } else if (aeron_start(a) < 0) {
    failed = aerr("aeron_start");
    a = nullptr;
  }
  if (a == nullptr) *err = failed;
  return a;
}

// A stream id per channel name (FNV-1a), never 0.
std::int32_t stream_id(const std::string& name) {
  std::uint32_t h = 2166136261u;
  for (const char ch : name) h = (h ^ static_cast<unsigned char>(ch)) * 16777619u;
  return static_cast<std::int32_t>(h & 0x3fffffff) + 1;
}

constexpr const char* kChannel = "aeron:ipc";
constexpr auto kSetupTimeout = std::chrono::seconds(10);

// Poll an async add until it completes (1), fails (-1) or the setup timeout.
template <class Poll>
std::string await_add(Poll&& poll, const char* what) {
  const auto end = std::chrono::steady_clock::now() + kSetupTimeout;
  for (;;) {
    const int r = poll();
    if (r > 0) return {};
    if (r < 0) return aerr(what);
    if (std::chrono::steady_clock::now() > end)
      return std::string(what) + ": no answer from the driver in 10 s";
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

template <bool Exclusive>
class AeronOut {
 public:
  ~AeronOut() { close(); }
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase == 2) {
      std::string err;
      aeron_t* a = client(&err);
      if (a == nullptr) return err;
      const std::int32_t id = stream_id(c.name);
      if constexpr (Exclusive) {
        aeron_async_add_exclusive_publication_t* async = nullptr;
        if (aeron_async_add_exclusive_publication(&async, a, kChannel, id) < 0)
          return aerr("aeron_async_add_exclusive_publication");
        return await_add([&] { return aeron_async_add_exclusive_publication_poll(&pub_, async); },
                         "add exclusive publication");
      } else {
        aeron_async_add_publication_t* async = nullptr;
        if (aeron_async_add_publication(&async, a, kChannel, id) < 0)
          return aerr("aeron_async_add_publication");
        return await_add([&] { return aeron_async_add_publication_poll(&pub_, async); }, "add publication");
      }
    }
    if (phase == 3) {
      // Every subscription of the stream must be connected before the first message (else offer() reports
      // NOT_CONNECTED or, with one subscriber connected, the others miss the start).
      const auto end = std::chrono::steady_clock::now() + kSetupTimeout;
      while (!connected()) {
        if (std::chrono::steady_clock::now() > end)
          return "aeron: the publication was not connected within 10 s";
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) close();
  }
  void send(const std::byte* msg, std::size_t n) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(msg);
    for (;;) {
      std::int64_t r;
      if constexpr (Exclusive)
        r = aeron_exclusive_publication_offer(pub_, p, n, nullptr, nullptr);
      else
        r = aeron_publication_offer(pub_, p, n, nullptr, nullptr);
      if (r > 0) return;
      // Back pressure and admin actions (a term rotation) are retried; anything else is fatal.
      if (r != AERON_PUBLICATION_BACK_PRESSURED && r != AERON_PUBLICATION_ADMIN_ACTION &&
          r != AERON_PUBLICATION_NOT_CONNECTED)
        fatal("aeron offer failed (" + std::to_string(r) + "): " + aeron_errmsg());
      if (r == AERON_PUBLICATION_NOT_CONNECTED && ++not_connected_ > 100'000'000)
        fatal("aeron: the publication stayed not connected");
    }
  }

 private:
  bool connected() const {
    if constexpr (Exclusive)
      return aeron_exclusive_publication_is_connected(pub_);
    else
      return aeron_publication_is_connected(pub_);
  }
  void close() {
    if (pub_ == nullptr) return;
    if constexpr (Exclusive)
      aeron_exclusive_publication_close(pub_, nullptr, nullptr);
    else
      aeron_publication_close(pub_, nullptr, nullptr);
    pub_ = nullptr;
  }
  std::conditional_t<Exclusive, aeron_exclusive_publication_t, aeron_publication_t>* pub_ = nullptr;
  u64 not_connected_ = 0;
};

class AeronIn {
 public:
  ~AeronIn() { close(); }
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase == 1) {
      copy_ = !c.zero_copy();
      buf_.resize(c.payload < 8 ? 8 : c.payload);
      std::string err;
      aeron_t* a = client(&err);
      if (a == nullptr) return err;
      // A message longer than the MTU arrives in fragments: the assembler hands it over whole (in place
      // when it fits one fragment, which every message up to ~1.4 KB does).
      if (aeron_fragment_assembler_create(&asm_, &AeronIn::on_message, this) < 0)
        return aerr("aeron_fragment_assembler_create");
      aeron_async_add_subscription_t* async = nullptr;
      if (aeron_async_add_subscription(&async, a, kChannel, stream_id(c.name), nullptr, nullptr, nullptr,
                                       nullptr) < 0)
        return aerr("aeron_async_add_subscription");
      return await_add([&] { return aeron_async_add_subscription_poll(&sub_, async); }, "add subscription");
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) close();
  }
  template <class F>
  void recv(F&& f) {
    recv_batch(f, 1);
  }
  // Up to `max` fragments in one poll (Aeron reads a batch of fragments from the log buffer per poll).
  template <class F>
  void recv_batch(F&& f, std::size_t max) {
    using Fn = std::remove_reference_t<F>;
    f_ = &f;
    call_ = [](void* fp, const std::byte* p, std::size_t n) { (*static_cast<Fn*>(fp))(p, n); };
    const std::size_t limit = std::min<std::size_t>(max, 1024);
    // Until a whole message came out of the assembler (a poll may end on a message's first fragments).
    delivered_ = 0;
    while (delivered_ == 0)
      (void)aeron_subscription_poll(sub_, aeron_fragment_assembler_handler, asm_, limit);
  }

 private:
  static void on_message(void* clientd, const std::uint8_t* buffer, std::size_t length, aeron_header_t*) {
    auto* self = static_cast<AeronIn*>(clientd);
    ++self->delivered_;
    const auto* p = reinterpret_cast<const std::byte*>(buffer);
    if (self->copy_) {
      std::memcpy(self->buf_.data(), p, length);
      self->call_(self->f_, self->buf_.data(), length);
    } else {
      self->call_(self->f_, p, length);
    }
  }
  void close() {
    if (sub_ != nullptr) aeron_subscription_close(sub_, nullptr, nullptr);
    sub_ = nullptr;
    if (asm_ != nullptr) aeron_fragment_assembler_delete(asm_);
    asm_ = nullptr;
  }
  aeron_subscription_t* sub_ = nullptr;
  aeron_fragment_assembler_t* asm_ = nullptr;
  void* f_ = nullptr;  // the receive loop's callable, for on_message
  void (*call_)(void*, const std::byte*, std::size_t) = nullptr;
  std::size_t delivered_ = 0;  // whole messages handed to f in this recv
  bool copy_ = true;
  std::vector<std::byte> buf_;
};

}  // namespace

std::unique_ptr<Bench> make_aeron_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err) {
  if (d.pattern == Pattern::queue) {
    *err = "Aeron has no competing consumers: every subscription sees every message";
    return nullptr;
  }
  if (std::string_view(d.transport) == "aeron-ipc-exclusive")
    return std::make_unique<ChannelBench<AeronOut<true>, AeronIn>>(d, p, ctl);
  return std::make_unique<ChannelBench<AeronOut<false>, AeronIn>>(d, p, ctl);
}

}  // namespace shmbus::bench
