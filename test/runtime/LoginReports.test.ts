import { describe, expect, it } from "vitest";
import { SessionState } from "../../src/pool/SessionState.ts";
import { encodeParameterStatus } from "../../src/protocol/backend.ts";
import { loginReport } from "../../src/runtime/LoginReports.ts";

const login = (tz: string) => [
  encodeParameterStatus("application_name", ""),
  encodeParameterStatus("TimeZone", tz),
  encodeParameterStatus("server_version", "18.4"),
];

describe("loginReport", () => {
  it("hands logins that reported the same bytes one shared report", () => {
    const a = loginReport(login("UTC"));
    const b = loginReport(login("UTC"));
    expect(b).toBe(a);
    expect(a.reported.get("TimeZone")).toBe("UTC");
    expect(a.reported.get("server_version")).toBe("18.4");
    // Only settings a session can change are tracked, under their lower-case names.
    expect(a.settings.current.get("timezone")).toEqual({ form: "raw", text: "UTC" });
    expect(a.settings.current.has("server_version")).toBe(false);
    // What a client is told: the same messages, in one buffer.
    expect(a.encoded).toEqual(Buffer.concat(login("UTC")));
  });

  it("keeps different reports apart", () => {
    const a = loginReport(login("UTC"));
    const b = loginReport(login("Europe/Berlin"));
    expect(b).not.toBe(a);
    expect(b.reported.get("TimeZone")).toBe("Europe/Berlin");
  });

  it("is never changed by a session that adopted it and then changed", () => {
    const report = loginReport(login("UTC"));
    const s = new SessionState();
    s.adoptFrom(report.settings);
    s.onParameterStatus("TimeZone", "Asia/Tokyo");
    expect(s.current.get("timezone")?.text).toBe("Asia/Tokyo");
    expect(report.settings.current.get("timezone")?.text).toBe("UTC");
    expect(loginReport(login("UTC")).settings.current.get("timezone")?.text).toBe("UTC");
  });
});
