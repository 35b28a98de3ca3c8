"""Guest operating systems in Ganeti's OS API format (see :mod:`haven.osdef.api`).

    find_os("busybox+default")      -> (OsDefinition, "default")
    os_environment(...)             -> the exact variables Ganeti gives OS scripts
    run_os_script(os_def, "create", env, log_path, timeout)
"""

from haven.osdef.api import (
    SCRIPTS,
    SUPPORTED_API_VERSIONS,
    SYSTEM_OS_PATH,
    BootHints,
    DiskEnv,
    NicEnv,
    OsDefinition,
    OsScript,
    OsStatus,
    diagnose_os,
    expand_vars,
    find_os,
    list_os,
    load_os,
    os_core_environment,
    os_environment,
    run_os_script,
    search_path,
    split_name,
)

__all__ = [
    "SCRIPTS", "SUPPORTED_API_VERSIONS", "SYSTEM_OS_PATH", "BootHints", "DiskEnv", "NicEnv",
    "OsDefinition", "OsScript", "OsStatus", "diagnose_os", "expand_vars", "find_os",
    "list_os", "load_os", "os_core_environment", "os_environment", "run_os_script",
    "search_path", "split_name",
]
