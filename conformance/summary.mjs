// Summarises http-cache-tests results the way the suite's own display does
// (lib/display.mjs determineTestResult), for our run and the published ones.
//
// usage: node summary.mjs SUITE_DIR OUR_RESULTS.json KNOWN_FAILURES.txt
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, oursFile, knownFile] = process.argv.slice(2)
const load = async (rel) => (await import(pathToFileURL(path.join(suiteDir, rel)).href)).default
// The suite's own index: the tests behind the published results. Browser-only
// tests count as required tests a proxy does not pass, as in those results.
const suites = await load('tests/index.mjs')
const published = await load('results/index.mjs')

const tests = new Map()
for (const suite of suites) {
  for (const test of suite.tests) {
    tests.set(test.id, test)
  }
}

function classify (id, results, seen = new Set()) {
  const test = tests.get(id)
  const result = results[id]
  if (!test || result === undefined) return 'untested'
  if (seen.has(id)) return 'fail'
  seen.add(id)
  for (const dep of test.depends_on || []) {
    const r = classify(dep, results, seen)
    if (r !== 'pass' && r !== 'yes') return 'dependency_fail'
  }
  if (Array.isArray(result) && result[0] === 'Setup') return 'setup_fail'
  const kind = test.kind || 'required'
  if (kind === 'check') return result === true ? 'yes' : 'no'
  if (result === true) return 'pass'
  return kind === 'optimal' ? 'optional_fail' : 'fail'
}

function summarise (results) {
  const s = { required: 0, pass: 0, fail: 0, dependency_fail: 0, setup_fail: 0, untested: 0, optimal: 0, optimal_pass: 0, failed: [] }
  for (const [id, test] of tests) {
    const kind = test.kind || 'required'
    const c = classify(id, results)
    if (kind === 'required') {
      s.required++
      if (c === 'pass') s.pass++
      else if (c === 'dependency_fail') s.dependency_fail++
      else if (c === 'untested') s.untested++
      else if (c === 'setup_fail') s.setup_fail++
      else s.fail++
      if (c !== 'pass') s.failed.push(id)
    } else if (kind === 'optimal') {
      s.optimal++
      if (c === 'pass') s.optimal_pass++
    }
  }
  return s
}

const ours = summarise(JSON.parse(fs.readFileSync(oursFile, 'utf8')))
const rows = [['tower-perf (this run)', ours]]
for (const item of published) {
  if (item.type !== 'rev-proxy') continue
  const results = JSON.parse(fs.readFileSync(path.join(suiteDir, 'results', item.file), 'utf8'))
  rows.push([`${item.name} ${item.version || ''}`.trim(), summarise(results)])
}
const pad = (v, n) => String(v).padEnd(n)
console.log(`${pad('implementation', 34)}${pad('required pass', 15)}${pad('fail', 6)}${pad('dep-fail', 10)}${pad('setup', 7)}optimal pass`)
for (const [name, s] of rows) {
  console.log(`${pad(name, 34)}${pad(`${s.pass}/${s.required}`, 15)}${pad(s.fail, 6)}${pad(s.dependency_fail, 10)}${pad(s.setup_fail, 7)}${s.optimal_pass}/${s.optimal}`)
}

// Every required test we do not pass must be on the committed list, with a reason.
const known = new Map()
for (const line of fs.readFileSync(knownFile, 'utf8').split('\n')) {
  const m = line.match(/^(\S+)\s+(.*)$/)
  if (m && !line.startsWith('#')) known.set(m[1], m[2])
}
const unexpected = ours.failed.filter(id => !known.has(id))
const fixed = [...known.keys()].filter(id => !ours.failed.includes(id))
if (fixed.length) {
  console.log(`\nnow passing, remove from the known-failures list: ${fixed.join(', ')}`)
}
if (unexpected.length) {
  console.log(`\nFAIL: ${unexpected.length} required test(s) fail and are not on the known-failures list:`)
  for (const id of unexpected) console.log(`  ${id}: ${JSON.stringify(JSON.parse(fs.readFileSync(oursFile, 'utf8'))[id])}`)
  process.exit(1)
}
console.log(`\nconformance: ${ours.pass} of ${ours.required} required tests pass; the ${ours.required - ours.pass} others are on the known-failures list`)
