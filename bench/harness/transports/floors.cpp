// The floors: what nothing built on the same mechanism can beat, measured in the same run as everything
// else.
//
//   floor-cacheline  one atomic word alone on its line, busy: the leader writes 2k+1, the follower answers
//                    2k+2. One line going there and back; it carries no payload.
//   floor-ring       shmbus::SpscRing (one per receiver), copy in and copy out, busy; the stream pattern
//                    pops in batches (one tail store per batch). In the queue pattern: a bare
//                    shmbus::MpmcRing of 32-bit values (no payload), yielding the CPU when empty or full.
//   floor-futex      bare FUTEX_WAIT/FUTEX_WAKE ping-pong on two shared words: the floor for anything that
//                    sleeps. No payload.
//   floor-eventfd    bare eventfd ping-pong (write, blocking read), the descriptors passed over a Unix
//                    socket. No payload.
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/mpmc_ring.hpp"
#include "shmbus/segment.hpp"
#include "shmbus/spsc_ring.hpp"

namespace shmbus::bench {
namespace {

struct alignas(kCacheLine) Word64 {
  std::atomic<u64> v;
};
struct alignas(kCacheLine) Word32 {
  std::atomic<u32> v;
};
// The words of the bare floors, each alone on its line.
struct FloorWords {
  Word64 line;  // floor-cacheline
  Word32 ping;  // floor-futex, leader -> follower
  Word32 pong;  // floor-futex, follower -> leader
};
static_assert(sizeof(FloorWords) == 3 * kCacheLine);

// The floor words in a segment created by the follower (phase 0) and opened by the leader (phase 2).
class WordsSegment {
 public:
  std::string setup(int phase, bool creator, const std::string& name) {
    if (creator && phase == 0) {
      auto seg = Segment::create(name, {.size = 4096 + sizeof(FloorWords), .kind = "bench"});
      if (!seg) return seg.error().message();
      auto ref = seg->allocate<FloorWords>(1, kCacheLine);
      if (!ref) return ref.error().message();
      seg->set_root(*ref);
      seg->publish();
      seg_ = std::move(*seg);
      owner_ = true;
    } else if (!creator && phase == 2) {
      auto seg = Segment::open(name);
      if (!seg) return seg.error().message();
      seg_ = std::move(*seg);
    }
    return {};
  }
  void teardown(int phase, const std::string& name) {
    if (phase == 0) seg_.unmap();
    if (phase == 1 && owner_) (void)Segment::remove(name);
  }
  FloorWords& words() const { return *seg_.root<FloorWords>(); }

 private:
  Segment seg_;
  bool owner_ = false;
};

class CacheLineBench final : public Bench {
 public:
  CacheLineBench(const BenchDesc& d, Part p) : name_(std::string(d.name) + ".line"), part_(p) {}
  std::string setup(int phase) override { return seg_.setup(phase, part_.role == Role::follower, name_); }
  void teardown(int phase) override { seg_.teardown(phase, name_); }
  std::string run(u64 count, RunIo& io) override {
    io.slot->started_seq.store(io.slot->cmd_seq.load(std::memory_order_relaxed), std::memory_order_release);
    std::atomic<u64>& w = seg_.words().line.v;
    if (part_.role == Role::leader) {
      u64* samples = io.samples;
      u64 prev = now_ticks();
      for (u64 i = 0; i < count; ++i) {
        const u64 k = k_++;
        w.store(2 * k + 1, std::memory_order_release);
        while (w.load(std::memory_order_acquire) != 2 * k + 2) {
        }
        const u64 t = now_ticks();
        samples[i] = t - prev;
        prev = t;
      }
    } else {
      for (u64 i = 0; i < count; ++i) {
        const u64 k = k_++;
        while (w.load(std::memory_order_acquire) != 2 * k + 1) {
        }
        w.store(2 * k + 2, std::memory_order_release);
      }
    }
    return {};
  }

 private:
  std::string name_;
  Part part_;
  WordsSegment seg_;
  u64 k_ = 0;
};

constexpr auto kForever = std::chrono::nanoseconds(-1);

// Block in FUTEX_WAIT until the word reads `want`.
void futex_await(std::atomic<u32>& w, u32 want) {
  for (;;) {
    const u32 v = w.load(std::memory_order_acquire);
    if (v == want) return;
    (void)futex_wait(&w, v, kForever);  // returns at once with -EAGAIN if w moved on
  }
}

class FutexBench final : public Bench {
 public:
  FutexBench(const BenchDesc& d, Part p) : name_(std::string(d.name) + ".futex"), part_(p) {}
  std::string setup(int phase) override { return seg_.setup(phase, part_.role == Role::follower, name_); }
  void teardown(int phase) override { seg_.teardown(phase, name_); }
  std::string run(u64 count, RunIo& io) override {
    io.slot->started_seq.store(io.slot->cmd_seq.load(std::memory_order_relaxed), std::memory_order_release);
    std::atomic<u32>& ping = seg_.words().ping.v;
    std::atomic<u32>& pong = seg_.words().pong.v;
    if (part_.role == Role::leader) {
      u64* samples = io.samples;
      u64 prev = now_ticks();
      for (u64 i = 0; i < count; ++i) {
        const auto v = static_cast<u32>(++k_);
        ping.store(v, std::memory_order_release);
        (void)futex_wake(&ping, 1);
        futex_await(pong, v);
        const u64 t = now_ticks();
        samples[i] = t - prev;
        prev = t;
      }
    } else {
      for (u64 i = 0; i < count; ++i) {
        const auto v = static_cast<u32>(++k_);
        futex_await(ping, v);
        pong.store(v, std::memory_order_release);
        (void)futex_wake(&pong, 1);
      }
    }
    return {};
  }

 private:
  std::string name_;
  Part part_;
  WordsSegment seg_;
  u64 k_ = 0;
};

// ---- eventfd: descriptors passed with SCM_RIGHTS ----

bool send_fds(int sock, const int* fds, int n) {
  char byte = 'F';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char buf[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = buf;
  m.msg_controllen = CMSG_SPACE(sizeof(int) * static_cast<std::size_t>(n));
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * static_cast<std::size_t>(n));
  std::memcpy(CMSG_DATA(c), fds, sizeof(int) * static_cast<std::size_t>(n));
  return ::sendmsg(sock, &m, 0) == 1;
}

bool recv_fds(int sock, int* fds, int n) {
  char byte;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char buf[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = buf;
  m.msg_controllen = sizeof buf;
  if (::recvmsg(sock, &m, 0) != 1) return false;
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  if (c == nullptr || c->cmsg_type != SCM_RIGHTS ||
      c->cmsg_len != CMSG_LEN(sizeof(int) * static_cast<std::size_t>(n)))
    return false;
  std::memcpy(fds, CMSG_DATA(c), sizeof(int) * static_cast<std::size_t>(n));
  return true;
}

class EventFdBench final : public Bench {
 public:
  EventFdBench(const BenchDesc& d, Part p, const Control& ctl)
      : path_(std::string(ctl.rundir) + "/" + d.name + ".efd"), part_(p) {}
  ~EventFdBench() override { close_all(); }
  std::string setup(int phase) override {
    const bool follower = part_.role == Role::follower;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path_.size() >= sizeof a.sun_path) return "socket path too long: " + path_;
    std::memcpy(a.sun_path, path_.c_str(), path_.size() + 1);
    if (follower && phase == 0) {
      fd_[0] = ::eventfd(0, EFD_CLOEXEC);
      fd_[1] = ::eventfd(0, EFD_CLOEXEC);
      listen_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd_[0] < 0 || fd_[1] < 0 || listen_ < 0) return errno_text("eventfd/socket");
      if (::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_, 1) != 0)
        return errno_text("bind " + path_);
    } else if (!follower && phase == 2) {
      sock_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(sock_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        return errno_text("connect " + path_);
    } else if (phase == 3) {
      if (follower) {
        sock_ = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
        if (sock_ < 0) return errno_text("accept");
        if (!send_fds(sock_, fd_, 2)) return errno_text("sendmsg SCM_RIGHTS");
      } else if (!recv_fds(sock_, fd_, 2)) {
        return errno_text("recvmsg SCM_RIGHTS");
      }
    }
    return {};
  }
  void teardown(int phase) override {
    if (phase == 0) close_all();
    if (phase == 1 && part_.role == Role::follower) ::unlink(path_.c_str());
  }
  std::string run(u64 count, RunIo& io) override {
    io.slot->started_seq.store(io.slot->cmd_seq.load(std::memory_order_relaxed), std::memory_order_release);
    const u64 one = 1;
    u64 v;
    if (part_.role == Role::leader) {
      u64* samples = io.samples;
      u64 prev = now_ticks();
      for (u64 i = 0; i < count; ++i) {
        if (::write(fd_[0], &one, 8) != 8 || ::read(fd_[1], &v, 8) != 8) return errno_text("eventfd");
        const u64 t = now_ticks();
        samples[i] = t - prev;
        prev = t;
      }
    } else {
      for (u64 i = 0; i < count; ++i)
        if (::read(fd_[0], &v, 8) != 8 || ::write(fd_[1], &one, 8) != 8) return errno_text("eventfd");
    }
    return {};
  }

 private:
  void close_all() {
    for (int* f : {&fd_[0], &fd_[1], &listen_, &sock_})
      if (*f >= 0) {
        ::close(*f);
        *f = -1;
      }
  }
  std::string path_;
  Part part_;
  int fd_[2] = {-1, -1};
  int listen_ = -1, sock_ = -1;
};

// ---- floor-ring: SpscRing (or MpmcRing for the queue pattern) as channel endpoints ----

struct RingRoot {
  Ref<SpscRingShared> spsc;
  Ref<MpmcRingShared> mpmc;
};

std::string ring_segment_name(const ChannelCtx& c, int receiver) {
  return c.shared() ? c.name : c.per_receiver(receiver);
}

Result<Segment> create_ring_segment(const ChannelCtx& c, int receiver) {
  const std::string name = ring_segment_name(c, receiver);
  const std::size_t bytes =
      c.shared() ? MpmcRing::footprint({c.depth, 0}) : SpscRing::footprint({c.depth, c.payload, 0});
  auto seg = Segment::create(name, {.size = 4096 + bytes + sizeof(RingRoot), .kind = "bench"});
  if (!seg) return seg.error();
  auto root = seg->allocate<RingRoot>(1, kCacheLine);
  if (!root) return root.error();
  RingRoot* r = seg->at(*root);
  if (c.shared()) {
    auto m = MpmcRing::place(*seg, {c.depth, 0});
    if (!m) return m.error();
    r->mpmc = *m;
  } else {
    auto s = SpscRing::place(*seg, {c.depth, c.payload, 0});
    if (!s) return s.error();
    r->spsc = *s;
  }
  seg->set_root(*root);
  seg->publish();
  return seg;
}

class RingOut {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    const int n = c.shared() ? 1 : c.receivers;
    for (int i = 0; i < n; ++i) {
      auto seg = Segment::open(ring_segment_name(c, i));
      if (!seg) return seg.error().message();
      RingRoot* r = seg->root<RingRoot>();
      if (c.shared()) {
        auto m = MpmcRing::attach(*seg, r->mpmc);
        if (!m) return m.error().message();
        mpmc_ = *m;
      } else {
        auto s = SpscRing::attach(*seg, r->spsc);
        if (!s) return s.error().message();
        spsc_.push_back(*s);
      }
      segs_.push_back(std::move(*seg));
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) {
      spsc_.clear();
      segs_.clear();
    }
  }
  void send(const std::byte* msg, std::size_t n) {
    if (mpmc_) {
      while (mpmc_->try_push(static_cast<u32>(seq_of(msg))) != RingStatus::ok) sched_yield();
      return;
    }
    for (SpscRing& r : spsc_)
      while (r.try_push(msg, n) != RingStatus::ok) {
      }
  }

 private:
  std::vector<Segment> segs_;
  std::vector<SpscRing> spsc_;
  std::optional<MpmcRing> mpmc_;
};

class RingIn {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    buf_.resize(c.payload < 8 ? 8 : c.payload);
    const bool creator = !c.shared() || c.index == 0;
    if (phase == 0 && creator) {
      auto seg = create_ring_segment(c, c.index);
      if (!seg) return seg.error().message();
      seg_ = std::move(*seg);
      owner_ = true;
      return attach(c);
    }
    if (phase == 1 && !creator) {
      auto seg = Segment::open(ring_segment_name(c, c.index));
      if (!seg) return seg.error().message();
      seg_ = std::move(*seg);
      return attach(c);
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0) seg_.unmap();
    if (phase == 1 && owner_) (void)Segment::remove(ring_segment_name(c, c.index));
  }
  template <class F>
  void recv(F&& f) {
    if (mpmc_) {
      u32 v;
      while (mpmc_->try_pop(v) != RingStatus::ok) sched_yield();
      const u64 s = v == 0xffffffffu ? kPillSeq : v;
      put_seq(buf_.data(), s);
      f(buf_.data(), 8);
      return;
    }
    std::size_t n;
    while (spsc_.try_pop(buf_.data(), buf_.size(), &n) != RingStatus::ok) {
    }
    f(buf_.data(), n);
  }
  // Stream pattern: take what is there with one tail store (copying each message out).
  template <class F>
  void recv_batch(F&& f, std::size_t max) {
    if (mpmc_) {
      recv(f);
      return;
    }
    std::byte* out = buf_.data();
    while (spsc_.pop_batch(
               [&](const SlotView& v) {
                 std::memcpy(out, v.data, v.size);
                 f(out, v.size);
               },
               max) == 0) {
    }
  }

 private:
  std::string attach(const ChannelCtx& c) {
    RingRoot* r = seg_.root<RingRoot>();
    if (c.shared()) {
      auto m = MpmcRing::attach(seg_, r->mpmc);
      if (!m) return m.error().message();
      mpmc_ = *m;
    } else {
      auto s = SpscRing::attach(seg_, r->spsc);
      if (!s) return s.error().message();
      spsc_ = *s;
    }
    return {};
  }
  Segment seg_;
  bool owner_ = false;
  SpscRing spsc_;
  std::optional<MpmcRing> mpmc_;
  std::vector<std::byte> buf_;
};

}  // namespace

std::unique_ptr<Bench> make_floor_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err) {
  const std::string t = d.transport;
  const bool pair = d.pattern == Pattern::roundtrip;
  if (t == "floor-cacheline" || t == "floor-futex" || t == "floor-eventfd") {
    if (!pair) {
      *err = t + " is a round-trip floor only";
      return nullptr;
    }
    if (t == "floor-cacheline") return std::make_unique<CacheLineBench>(d, p);
    if (t == "floor-futex") return std::make_unique<FutexBench>(d, p);
    return std::make_unique<EventFdBench>(d, p, ctl);
  }
  if (t == "floor-ring") return std::make_unique<ChannelBench<RingOut, RingIn>>(d, p, ctl);
  *err = "unknown floor " + t;
  return nullptr;
}

}  // namespace shmbus::bench
