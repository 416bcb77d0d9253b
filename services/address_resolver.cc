// Implementation of services/address_resolver.h.
#include "services/address_resolver.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ultramem::services {
namespace {

// Splits "host:port" / "[v6]:port"; false when `target` has another shape.
bool SplitHostPort(const std::string& target, std::string* host, std::string* port) {
  std::string::size_type colon;
  if (!target.empty() && target[0] == '[') {
    const auto close = target.find(']');
    if (close == std::string::npos || close + 1 >= target.size() || target[close + 1] != ':') {
      return false;
    }
    *host = target.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = target.rfind(':');
    if (colon == std::string::npos) return false;
    *host = target.substr(0, colon);
    if (host->find(':') != std::string::npos) return false;  // a bare IPv6 address
  }
  *port = target.substr(colon + 1);
  return !host->empty() && !port->empty() &&
         std::all_of(port->begin(), port->end(), [](char c) { return absl::ascii_isdigit(c); });
}

bool IsLiteralIp(const std::string& host) {
  in6_addr buffer;
  return inet_pton(AF_INET, host.c_str(), &buffer) == 1 ||
         inet_pton(AF_INET6, host.c_str(), &buffer) == 1;
}

}  // namespace

bool IsFixedAddress(const std::string& target) {
  for (const char* scheme : {"unix:", "unix-abstract:", "vsock:", "ipv4:", "ipv6:", "dns:"}) {
    if (absl::StartsWith(target, scheme)) return true;
  }
  if (absl::StrContains(target, "://")) return true;
  std::string host, port;
  if (!SplitHostPort(target, &host, &port)) return true;
  return IsLiteralIp(host);
}

absl::StatusOr<std::vector<std::string>> ResolveWithGetaddrinfo(const std::string& target) {
  std::string host, port;
  if (!SplitHostPort(target, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("\"", target, "\" is not host:port"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
  if (rc != 0) {
    const std::string message = absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc));
    if (rc == EAI_AGAIN) return absl::UnavailableError(message);
    if (rc == EAI_NONAME
#ifdef EAI_NODATA
        || rc == EAI_NODATA
#endif
    ) {
      return absl::NotFoundError(message);
    }
    return absl::UnknownError(message);
  }
  std::vector<std::string> addresses;
  for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr, text,
                sizeof(text));
      addresses.push_back(absl::StrCat(text, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr, text,
                sizeof(text));
      addresses.push_back(absl::StrCat("[", text, "]:", port));
    }
  }
  freeaddrinfo(list);
  std::sort(addresses.begin(), addresses.end());
  addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
  if (addresses.empty()) return absl::NotFoundError(absl::StrCat(host, " has no IP address"));
  return addresses;
}

}  // namespace ultramem::services
