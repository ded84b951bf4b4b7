#include "router/http_server.h"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <string>

namespace kvtier::router {
namespace {

// poll() for `events` for up to `timeout_ms`; > 0 when ready.
int PollFor(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  int n;
  do {
    n = poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n;
}

void IpAndPort(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if ((peer ? getpeername : getsockname)(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return;
  }
  std::array<char, NI_MAXHOST> host{};
  std::array<char, NI_MAXSERV> service{};
  if (getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host.data(), host.size(), service.data(),
                  service.size(), NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host.data();
    port = std::atoi(service.data());
  }
}

// Whether OpenSSL holds decrypted bytes of `ssl` (null: plain) not read yet.
bool Pending(SSL* ssl) { return ssl != nullptr && SSL_pending(ssl) > 0; }

// httplib's SocketStream (a read buffer, timeouts, a peer-alive check on write) with a budget
// of bytes the request may read; through `ssl` when not null (HTTPS).
class BoundedSocketStream : public httplib::Stream {
 public:
  BoundedSocketStream(int fd, SSL* ssl, int read_timeout_ms, int write_timeout_ms, uint64_t budget)
      : fd_(fd),
        ssl_(ssl),
        read_timeout_ms_(read_timeout_ms),
        write_timeout_ms_(write_timeout_ms),
        budget_(budget) {}

  bool exhausted() const { return budget_ == 0; }

  bool is_readable() const override {
    return Pending(ssl_) || PollFor(fd_, POLLIN, read_timeout_ms_) > 0;
  }
  bool is_writable() const override {
    if (PollFor(fd_, POLLOUT, write_timeout_ms_) <= 0) return false;
    if (PollFor(fd_, POLLIN, 0) == 0) return true;
    char c;  // readable: alive unless the peer closed
    return recv(fd_, &c, 1, MSG_PEEK) > 0;
  }

  ssize_t read(char* ptr, size_t size) override {
    size = static_cast<size_t>(std::min<uint64_t>(size, budget_));
    if (size == 0) return -1;
    if (begin_ == end_) {
      if (!is_readable()) return -1;
      ssize_t n;
      if (ssl_ != nullptr) {
        n = SSL_read(ssl_, buffer_.data(), static_cast<int>(buffer_.size()));
        if (n <= 0)
          return SSL_get_error(ssl_, static_cast<int>(n)) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
      } else {
        do {
          n = recv(fd_, buffer_.data(), buffer_.size(), 0);
        } while (n < 0 && errno == EINTR);
      }
      if (n <= 0) return n;
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    size = std::min(size, end_ - begin_);
    std::memcpy(ptr, buffer_.data() + begin_, size);
    begin_ += size;
    budget_ -= size;
    return static_cast<ssize_t>(size);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    if (ssl_ != nullptr) {
      const int n = SSL_write(ssl_, ptr, static_cast<int>(std::min<size_t>(size, INT_MAX)));
      return n > 0 ? n : -1;
    }
    ssize_t n;
    do {
      n = send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    IpAndPort(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    IpAndPort(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  const int fd_;
  SSL* const ssl_;
  const int read_timeout_ms_;
  const int write_timeout_ms_;
  uint64_t budget_;
  std::array<char, 4096> buffer_;
  size_t begin_ = 0, end_ = 0;
};

}  // namespace

HttpServer::HttpServer(uint64_t max_body_bytes, SslCtxPtr tls)
    : max_request_bytes_(max_body_bytes + kDrainBytes + kMaxHeaderBytes), tls_(std::move(tls)) {}

bool HttpServer::process_and_close_socket(socket_t sock) {
  auto ms = [](time_t sec, time_t usec) { return static_cast<int>(sec * 1000 + usec / 1000); };
  auto close_socket = [sock] {
    shutdown(sock, SHUT_RDWR);
    close(sock);
  };
  // A response sent before the request's body was read (401, 429) must not be destroyed by the
  // reset that closing a socket with unread bytes sends: when bytes are waiting, stop writing
  // and read and drop them for a bounded time first (a lingering close).
  auto linger_and_close = [sock, close_socket](bool pending) {
    if (pending || PollFor(sock, POLLIN, 0) > 0) {
      shutdown(sock, SHUT_WR);
      std::array<char, 4096> drop;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
      uint64_t dropped = 0;
      while (dropped < kDrainBytes && std::chrono::steady_clock::now() < deadline &&
             PollFor(sock, POLLIN, 50) > 0) {
        const ssize_t n = recv(sock, drop.data(), drop.size(), 0);
        if (n <= 0) break;
        dropped += static_cast<uint64_t>(n);
      }
    }
    close_socket();
  };
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(nullptr, SSL_free);
  if (tls_ != nullptr) {
    // The handshake and OpenSSL's reads and writes block: the timeouts bound them.
    const timeval rcv{read_timeout_sec_, static_cast<suseconds_t>(read_timeout_usec_)};
    const timeval snd{write_timeout_sec_, static_cast<suseconds_t>(write_timeout_usec_)};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof(rcv));
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof(snd));
    ssl.reset(SSL_new(tls_.get()));
    if (ssl == nullptr || SSL_set_fd(ssl.get(), sock) != 1 || SSL_accept(ssl.get()) != 1) {
      ERR_clear_error();  // a client that is not TLS, or does not trust us: nothing to answer
      close_socket();
      return false;
    }
  }
  // Waits for the next request of a kept-alive connection, in short steps so that stop() is
  // noticed (as httplib does).
  auto next_request = [&] {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(keep_alive_timeout_sec_);
    while (svr_sock_ != INVALID_SOCKET) {
      if (Pending(ssl.get())) return true;
      const int ready = PollFor(sock, POLLIN, 10);
      if (ready != 0) return ready > 0;
      if (std::chrono::steady_clock::now() > deadline) return false;
    }
    return false;
  };
  bool ret = false;
  for (size_t left = keep_alive_max_count_; left > 0 && next_request(); --left) {
    BoundedSocketStream stream(sock, ssl.get(), ms(read_timeout_sec_, read_timeout_usec_),
                               ms(write_timeout_sec_, write_timeout_usec_), max_request_bytes_);
    bool connection_closed = false;
    ret = process_request(stream, /*close_connection=*/left == 1, connection_closed, nullptr);
    if (!ret || connection_closed || stream.exhausted()) break;
  }
  const bool pending = Pending(ssl.get());
  if (ssl != nullptr) SSL_shutdown(ssl.get());  // close_notify; the peer's is not awaited
  ERR_clear_error();
  linger_and_close(pending);
  return ret;
}

}  // namespace kvtier::router
