// Peers that go through the kernel: pipe (a FIFO, which is a pipe with a name), Unix stream and seqpacket
// sockets, POSIX message queues.
//
// busy mode: descriptors are O_NONBLOCK and the receiver spins on EAGAIN (a syscall per poll); blocking
// mode: blocking descriptors, so the receiver sleeps in the kernel. Each receiver has its own object
// (FIFO, listening socket, queue); a fan-out sender writes to each in turn. In the queue pattern a FIFO and a
// message queue are shared by all producers and consumers (a pipe write of at most PIPE_BUF bytes is atomic,
// so fixed-size messages stay whole); sockets connect two endpoints and are skipped there.
#include <fcntl.h>
#include <mqueue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <climits>
#include <fstream>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"

namespace shmbus::bench {

namespace {

bool set_nonblocking(int fd, bool on) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) return false;
  return ::fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)) == 0;
}

void write_all(int fd, const std::byte* p, std::size_t n) {
  std::size_t off = 0;
  while (off < n) {
    const ssize_t w = ::write(fd, p + off, n - off);
    if (w > 0) {
      off += static_cast<std::size_t>(w);
    } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
      fatal(errno_text("write"));
    }
  }
}

void read_all(int fd, std::byte* p, std::size_t n) {
  std::size_t off = 0;
  while (off < n) {
    const ssize_t r = ::read(fd, p + off, n - off);
    if (r > 0) {
      off += static_cast<std::size_t>(r);
    } else if (r == 0) {
      fatal("read: end of file (the sender closed)");
    } else if (errno != EAGAIN && errno != EINTR) {
      fatal(errno_text("read"));
    }
  }
}

std::size_t pipe_max_size() {
  std::ifstream f("/proc/sys/fs/pipe-max-size");
  std::size_t v = 1 << 20;
  f >> v;
  return v;
}

// ---- pipe (FIFO) ----

std::string fifo_path(const ChannelCtx& c, int receiver) {
  return c.dir + "/" + (c.shared() ? c.name : c.per_receiver(receiver)) + ".fifo";
}

class PipeOut {
 public:
  ~PipeOut() { close_all(); }
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    const int n = c.shared() ? 1 : c.receivers;
    for (int i = 0; i < n; ++i) {
      // Non-blocking open of a FIFO for writing succeeds only once a reader has it open (phase 0/1).
      const int fd = ::open(fifo_path(c, i).c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd < 0) return errno_text("open " + fifo_path(c, i));
      fds_.push_back(fd);
      // A pipe as large as one message (up to pipe-max-size) lets a large message go in one write.
      const std::size_t want =
          std::min(pipe_max_size(), std::max<std::size_t>(65536, std::bit_ceil(c.payload)));
      (void)::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(want));
      if (c.blocking() && !set_nonblocking(fd, false)) return errno_text("fcntl");
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) close_all();
  }
  void send(const std::byte* msg, std::size_t n) {
    for (int fd : fds_) write_all(fd, msg, n);
  }

 private:
  void close_all() {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }
  std::vector<int> fds_;
};

class PipeIn {
 public:
  ~PipeIn() {
    if (fd_ >= 0) ::close(fd_);
  }
  std::string setup(int phase, const ChannelCtx& c) {
    buf_.resize(c.payload);
    n_ = c.payload;
    const bool creator = !c.shared() || c.index == 0;
    const std::string path = fifo_path(c, c.index);
    if (phase == 0 && creator) {
      if (::mkfifo(path.c_str(), 0600) != 0) return errno_text("mkfifo " + path);
      owner_ = true;
    }
    if ((phase == 0 && creator) || (phase == 1 && !creator)) {
      fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd_ < 0) return errno_text("open " + path);
      if (c.blocking() && !set_nonblocking(fd_, false)) return errno_text("fcntl");
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0 && fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    if (phase == 1 && owner_) ::unlink(fifo_path(c, c.index).c_str());
  }
  template <class F>
  void recv(F&& f) {
    read_all(fd_, buf_.data(), n_);
    f(buf_.data(), n_);
  }

 private:
  int fd_ = -1;
  bool owner_ = false;
  std::size_t n_ = 0;
  std::vector<std::byte> buf_;
};

// ---- Unix sockets ----

std::string sock_path(const ChannelCtx& c, int receiver) {
  return c.dir + "/" + c.per_receiver(receiver) + ".sock";
}

bool make_addr(const std::string& path, sockaddr_un* a) {
  *a = {};
  a->sun_family = AF_UNIX;
  if (path.size() >= sizeof a->sun_path) return false;
  std::memcpy(a->sun_path, path.c_str(), path.size() + 1);
  return true;
}

// Socket buffers big enough for two messages in flight (SO_*BUFFORCE as root, else what the limits allow).
void size_buffers(int fd, std::size_t payload) {
  if (payload <= 32768) return;
  const int want = static_cast<int>(std::min<std::size_t>(2 * payload + 65536, 64u << 20));
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) != 0)
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) != 0)
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
}

template <int kType>
class UdsOut {
 public:
  ~UdsOut() { close_all(); }
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    for (int i = 0; i < c.receivers; ++i) {
      sockaddr_un a;
      if (!make_addr(sock_path(c, i), &a)) return "socket path too long: " + sock_path(c, i);
      const int fd = ::socket(AF_UNIX, kType | SOCK_CLOEXEC, 0);
      if (fd < 0) return errno_text("socket");
      fds_.push_back(fd);
      size_buffers(fd, c.payload);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        return errno_text("connect " + sock_path(c, i));
      if (!c.blocking() && !set_nonblocking(fd, true)) return errno_text("fcntl");
    }
    if (kType == SOCK_SEQPACKET) {
      int sndbuf = 0;
      socklen_t len = sizeof sndbuf;
      ::getsockopt(fds_[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &len);
      if (static_cast<std::size_t>(sndbuf) < c.payload + 1024)
        return "a " + std::to_string(c.payload) + "-byte datagram exceeds SO_SNDBUF (" +
               std::to_string(sndbuf) + " bytes; raise net.core.wmem_max or run as root)";
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) close_all();
  }
  void send(const std::byte* msg, std::size_t n) {
    for (int fd : fds_) {
      if constexpr (kType == SOCK_STREAM) {
        write_all(fd, msg, n);
      } else {
        for (;;) {
          const ssize_t w = ::send(fd, msg, n, MSG_NOSIGNAL);
          if (w == static_cast<ssize_t>(n)) break;
          if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
          fatal(errno_text("send (seqpacket, " + std::to_string(n) + " bytes)"));
        }
      }
    }
  }

 private:
  void close_all() {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }
  std::vector<int> fds_;
};

template <int kType>
class UdsIn {
 public:
  ~UdsIn() { close_all(); }
  std::string setup(int phase, const ChannelCtx& c) {
    if (c.shared()) return "a Unix socket connects two endpoints: there are no competing consumers on one";
    buf_.resize(c.payload);
    n_ = c.payload;
    const std::string path = sock_path(c, c.index);
    if (phase == 0) {
      sockaddr_un a;
      if (!make_addr(path, &a)) return "socket path too long: " + path;
      listen_ = ::socket(AF_UNIX, kType | SOCK_CLOEXEC, 0);
      if (listen_ < 0) return errno_text("socket");
      size_buffers(listen_, c.payload);
      if (::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_, 4) != 0)
        return errno_text("bind/listen " + path);
      owner_ = true;
    } else if (phase == 3) {
      fd_ = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd_ < 0) return errno_text("accept " + path);
      size_buffers(fd_, c.payload);
      if (!c.blocking() && !set_nonblocking(fd_, true)) return errno_text("fcntl");
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0) close_all();
    if (phase == 1 && owner_) ::unlink(sock_path(c, c.index).c_str());
  }
  template <class F>
  void recv(F&& f) {
    if constexpr (kType == SOCK_STREAM) {
      read_all(fd_, buf_.data(), n_);
    } else {
      for (;;) {
        const ssize_t r = ::recv(fd_, buf_.data(), n_, 0);
        if (r == static_cast<ssize_t>(n_)) break;
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        fatal(r == 0 ? std::string("recv: the sender closed") : errno_text("recv (seqpacket)"));
      }
    }
    f(buf_.data(), n_);
  }

 private:
  void close_all() {
    for (int* f : {&fd_, &listen_})
      if (*f >= 0) {
        ::close(*f);
        *f = -1;
      }
  }
  int listen_ = -1, fd_ = -1;
  bool owner_ = false;
  std::size_t n_ = 0;
  std::vector<std::byte> buf_;
};

// ---- POSIX message queues ----

std::string mq_name(const ChannelCtx& c, int receiver) {
  return "/" + (c.shared() ? c.name : c.per_receiver(receiver));
}

std::string mq_limits() {
  auto read = [](const char* p) {
    std::ifstream f(p);
    std::string s;
    f >> s;
    return s.empty() ? std::string("?") : s;
  };
  return "limits: msg_max " + read("/proc/sys/fs/mqueue/msg_max") + ", msgsize_max " +
         read("/proc/sys/fs/mqueue/msgsize_max") + ", and RLIMIT_MSGQUEUE";
}

class MqOut {
 public:
  ~MqOut() { close_all(); }
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    const int n = c.shared() ? 1 : c.receivers;
    for (int i = 0; i < n; ++i) {
      const mqd_t q = ::mq_open(mq_name(c, i).c_str(), O_WRONLY | (c.blocking() ? 0 : O_NONBLOCK));
      if (q == static_cast<mqd_t>(-1)) return errno_text("mq_open " + mq_name(c, i));
      qs_.push_back(q);
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) close_all();
  }
  void send(const std::byte* msg, std::size_t n) {
    for (mqd_t q : qs_)
      while (::mq_send(q, reinterpret_cast<const char*>(msg), n, 0) != 0)
        if (errno != EAGAIN && errno != EINTR) fatal(errno_text("mq_send"));
  }

 private:
  void close_all() {
    for (mqd_t q : qs_) ::mq_close(q);
    qs_.clear();
  }
  std::vector<mqd_t> qs_;
};

class MqIn {
 public:
  ~MqIn() {
    if (q_ != static_cast<mqd_t>(-1)) ::mq_close(q_);
  }
  std::string setup(int phase, const ChannelCtx& c) {
    buf_.resize(c.payload);
    n_ = c.payload;
    const bool creator = !c.shared() || c.index == 0;
    const std::string name = mq_name(c, c.index);
    const int flags = O_RDONLY | (c.blocking() ? 0 : O_NONBLOCK);
    if (phase == 0 && creator) {
      mq_attr a{};
      a.mq_maxmsg = static_cast<long>(c.depth);
      a.mq_msgsize = static_cast<long>(c.payload);
      q_ = ::mq_open(name.c_str(), flags | O_CREAT | O_EXCL, 0600, &a);
      if (q_ == static_cast<mqd_t>(-1))
        return errno_text("mq_open " + name + " (" + std::to_string(c.depth) + " x " +
                          std::to_string(c.payload) + " bytes; " + mq_limits() + ")");
      owner_ = true;
    } else if (phase == 1 && !creator) {
      q_ = ::mq_open(name.c_str(), flags);
      if (q_ == static_cast<mqd_t>(-1)) return errno_text("mq_open " + name);
    }
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0 && q_ != static_cast<mqd_t>(-1)) {
      ::mq_close(q_);
      q_ = static_cast<mqd_t>(-1);
    }
    if (phase == 1 && owner_) ::mq_unlink(mq_name(c, c.index).c_str());
  }
  template <class F>
  void recv(F&& f) {
    for (;;) {
      const ssize_t r = ::mq_receive(q_, reinterpret_cast<char*>(buf_.data()), n_, nullptr);
      if (r >= 0) break;
      if (errno != EAGAIN && errno != EINTR) fatal(errno_text("mq_receive"));
    }
    f(buf_.data(), n_);
  }

 private:
  mqd_t q_ = static_cast<mqd_t>(-1);
  bool owner_ = false;
  std::size_t n_ = 0;
  std::vector<std::byte> buf_;
};

}  // namespace

std::unique_ptr<Bench> make_kernel_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err) {
  const std::string t = d.transport;
  if (t == "pipe") {
    if (d.pattern == Pattern::queue && d.payload > PIPE_BUF) {
      *err = "a pipe keeps messages whole for competing readers only up to PIPE_BUF (" +
             std::to_string(PIPE_BUF) + " bytes)";
      return nullptr;
    }
    return std::make_unique<ChannelBench<PipeOut, PipeIn>>(d, p, ctl);
  }
  if (t == "uds-stream")
    return std::make_unique<ChannelBench<UdsOut<SOCK_STREAM>, UdsIn<SOCK_STREAM>>>(d, p, ctl);
  if (t == "uds-seqpacket")
    return std::make_unique<ChannelBench<UdsOut<SOCK_SEQPACKET>, UdsIn<SOCK_SEQPACKET>>>(d, p, ctl);
  if (t == "posix-mq") return std::make_unique<ChannelBench<MqOut, MqIn>>(d, p, ctl);
  *err = "unknown kernel transport " + t;
  return nullptr;
}

}  // namespace shmbus::bench
