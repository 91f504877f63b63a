// Evaluates AWS requests against IAM identity policies offline with @cloud-copilot/iam-simulate (an
// implementation of AWS's policy evaluation: actions and resource types from AWS's service reference data,
// resource ARN matching, every condition operator, policy variables). Used by tests/tests/e2e/aws_iam.rs.
//
//   node tests/peers/iam/simulate.mjs INPUT.json   → JSON on stdout
//
// INPUT: { "account": "123456789012",
//          "principals": { "<fn>": "arn:aws:iam::…:user/…" },
//          "policies": { "<fn>": [ { "name": "…", "document": { …IAM policy… } } ] },
//          "requests": [ { "fn": "…", "action": "kms:Decrypt", "resource": "arn:…" | "*",
//                          "context": { "kms:EncryptionContext:org": "acme", … } } ] }
// OUTPUT: { "results": [ { "result": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "Error",
//                          "errors": …, "grants": [ { "policy": "…", "statement": "…",
//                                                     "actions": ["…"], "resources": ["…"] } ] } ] }
// `grants` names, for an allowed request, each policy statement that allowed it and which of its Action and
// Resource entries matched: the test's check that every granted permission is used.
//
// Two passes per request. `runSimulation` (the public API) validates the action, the resource ARN against the
// action's resource types, and the context keys; but this version drops context keys whose name carries a
// variable after a colon, such as `kms:EncryptionContext:org` (it only matches `…/tag`-style variables), so
// its decision would ignore chainkeeper's encryption-context conditions. The decision and the explains
// therefore come from the same engine's core `authorize` (what its `runUnsafeSimulation` calls) with the full
// request context. The package is pinned (package-lock.json), so these internal paths are stable.
import { readFileSync } from 'node:fs'
import { loadPolicy } from '@cloud-copilot/iam-policy'
import { runSimulation } from '@cloud-copilot/iam-simulate'
import { DiscoveryContextKeyConstraints } from './node_modules/@cloud-copilot/iam-simulate/dist/esm/context_keys/discoveryContextKeyConstraints.js'
import { authorize } from './node_modules/@cloud-copilot/iam-simulate/dist/esm/core_engine/CoreSimulatorEngine.js'
import { AwsRequestImpl } from './node_modules/@cloud-copilot/iam-simulate/dist/esm/request/request.js'
import { RequestContextImpl } from './node_modules/@cloud-copilot/iam-simulate/dist/esm/requestContext.js'

const input = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const list = (x) => (x === undefined ? [] : Array.isArray(x) ? x : [x])

// A KMS key is governed by its key policy; chainkeeper creates organisation keys without one, so each gets
// KMS's default key policy, which delegates to IAM (the account's identity policies decide). Table and secrets
// have no resource policy.
const resourcePolicyOf = (req) =>
  req.action.startsWith('kms:') && req.resource.includes(':key/')
    ? {
        Version: '2012-10-17',
        Statement: [
          {
            Sid: 'Enable IAM User Permissions',
            Effect: 'Allow',
            Principal: { AWS: `arn:aws:iam::${input.account}:root` },
            Action: 'kms:*',
            Resource: '*'
          }
        ]
      }
    : undefined

const results = []
for (const req of input.requests) {
  const simulation = {
    identityPolicies: input.policies[req.fn].map((p) => ({ name: p.name, policy: p.document })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: resourcePolicyOf(req),
    request: {
      action: req.action,
      principal: input.principals[req.fn],
      resource: { resource: req.resource, accountId: input.account },
      contextVariables: req.context || {}
    }
  }
  const checked = await runSimulation(simulation, {})
  if (checked.resultType === 'error') {
    results.push({ result: 'Error', errors: checked.errors, grants: [] })
    continue
  }
  const analysis = authorize({
    request: new AwsRequestImpl(
      input.principals[req.fn],
      { resource: req.resource, accountId: input.account },
      req.action,
      new RequestContextImpl(req.context || {})
    ),
    sessionPolicy: undefined,
    identityPolicies: simulation.identityPolicies.map((p) => loadPolicy(p.policy, { name: p.name })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: simulation.resourcePolicy ? loadPolicy(simulation.resourcePolicy, { name: 'key-policy' }) : undefined,
    permissionBoundaries: undefined,
    vpcEndpointPolicies: undefined,
    simulationParameters: { simulationMode: 'Strict', discoveryContextKeyConstraints: new DiscoveryContextKeyConstraints([]) },
    serviceSettings: { s3: {} }
  })
  const grants = []
  for (const s of analysis.identityAnalysis?.allowStatements || []) {
    grants.push({
      policy: s.policyId,
      statement: s.explain.identifier,
      actions: list(s.explain.actions).filter((a) => a.matches).map((a) => a.action),
      resources: list(s.explain.resources).filter((a) => a.matches).map((a) => a.resource)
    })
  }
  results.push({ result: analysis.result, grants })
}
process.stdout.write(JSON.stringify({ results }))
