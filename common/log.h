// Minimal leveled logging to stderr (our Abseil has no LOG). Thread safe: one write per line.
#pragma once

#include <string>

#include "absl/strings/str_cat.h"

namespace ultramem {

enum class LogLevel { kInfo = 0, kWarning = 1, kError = 2 };

// Messages below this level are dropped. Default kInfo; ULTRAMEM_LOG_LEVEL=warning|error raises it.
void SetMinLogLevel(LogLevel level);
void LogLine(LogLevel level, const char* file, int line, const std::string& message);

}  // namespace ultramem

#define UM_LOG_INFO(...) ::ultramem::LogLine(::ultramem::LogLevel::kInfo, __FILE__, __LINE__, ::absl::StrCat(__VA_ARGS__))
#define UM_LOG_WARNING(...) ::ultramem::LogLine(::ultramem::LogLevel::kWarning, __FILE__, __LINE__, ::absl::StrCat(__VA_ARGS__))
#define UM_LOG_ERROR(...) ::ultramem::LogLine(::ultramem::LogLevel::kError, __FILE__, __LINE__, ::absl::StrCat(__VA_ARGS__))
