"""Multi-provider fallback: a list of providers is tried in order until one works.

The first provider here is an SSH host that does not answer (port 9 on this machine), so
provisioning fails there, the pool says why, and falls back to sky.Local. With clouds you
would write `provider=[sky.AWS(), sky.Verda(), sky.Local()]` and `selection="cheapest"`.
Runs on this machine, no cloud account needed.
"""

import getpass

import skyward as sky


@sky.compute
def hello() -> str:
    return "hello from the provider that worked"


def main() -> None:
    unreachable = sky.SSH(hosts=[f"{getpass.getuser()}@127.0.0.1:9"], connect_timeout=2)
    errors: list[str] = []

    def on_error(event: sky.SkywardEvent) -> None:
        if isinstance(event, sky.Error):
            errors.append(event.message)

    with sky.ComputePool(
        provider=[unreachable, sky.Local()], display="quiet", on_event=on_error
    ) as pool:
        print(hello() >> pool)
    print("first provider failed:", errors[0] if errors else "no")


if __name__ == "__main__":
    main()
