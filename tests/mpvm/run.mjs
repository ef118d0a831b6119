// Runs one scenario on MicroPython's own interpreter (the WebAssembly port) and prints the outcome as JSON.
//
// stdin:  {"files": {"/path/in/vm.py": "text", ...}, "script": "python source" or ["source", ...],
//          "stdin": "bytes for sys.stdin, latin-1 (optional; EOF after them)"}
// A list of scripts runs in order in one VM, sharing globals: this build collects garbage
// only between top-level runs, so a memory measurement needs one run per step.
// stdout: {"stdout": "what the script printed", "error": null | {"type": "...", "message": "..."}}
// A Python exception is a result, not a runner failure: exit 0 either way; exit 2 on bad input.
import { readFileSync } from "node:fs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

function fail(message) {
    process.stderr.write(message + "\n");
    process.exit(2);
}

let request;
try {
    request = JSON.parse(readFileSync(0, "utf8"));
} catch (err) {
    fail("run.mjs: the request on stdin is not JSON: " + err.message);
}
const scripts = typeof request.script === "string" ? [request.script] : request.script;
if (!Array.isArray(scripts) || !scripts.every((script) => typeof script === "string")) {
    fail("run.mjs: the request's \"script\" must be a string or a list of strings.");
}

const printed = [];
const input = Buffer.from(request.stdin || "", "latin1");
let next = 0;
const mp = await loadMicroPython({
    heapsize: request.heapsize || 1024 * 1024,
    linebuffer: false,
    stdout: (bytes) => printed.push(Buffer.from(bytes)),
    stderr: (bytes) => printed.push(Buffer.from(bytes)),
    // One byte per call, null once the scripted input is used up (end of file).
    stdin: () => (next < input.length ? input[next++] : null),
});

function makeDirs(path) {
    const parts = path.split("/").slice(1, -1);
    let dir = "";
    for (const part of parts) {
        dir += "/" + part;
        if (!mp.FS.analyzePath(dir).exists) {
            mp.FS.mkdir(dir);
        }
    }
}

for (const [path, text] of Object.entries(request.files || {})) {
    if (!path.startsWith("/")) {
        fail("run.mjs: file path " + JSON.stringify(path) + " must be absolute.");
    }
    makeDirs(path);
    mp.FS.writeFile(path, text);
}

let error = null;
try {
    for (const script of scripts) {
        mp.runPython(script);
    }
} catch (err) {
    if (err.name !== "PythonError") {
        throw err;
    }
    error = { type: err.type, message: err.message };
}
process.stdout.write(JSON.stringify({ stdout: Buffer.concat(printed).toString("latin1"), error }) + "\n");
