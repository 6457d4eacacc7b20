"""pcdemo: the PacketCloud end-to-end demo (``python -m pcdemo``, ``./quickstart demo``).

The one package that needs the SDK (``pcsock``), the site (``pcsite_lite``) and the testbed
(``testbed``) together, so it sits above all three and none of them imports it
(docs/architecture.md, "Packages"):

- :mod:`pcdemo.scenarios`: the scenario registry, the :class:`~pcdemo.scenarios.World` that
  scenarios drive, the simulated world (any topology), the four service-form scenarios and
  ``main``;
- :mod:`pcdemo.roles`: who plays which part on a topology (``--topology FILE``): sender,
  receiver, sites, PSP and DNS chosen by role, with the topology's ``[demo]`` hints, and why
  a scenario is not applicable;
- :mod:`pcdemo.testbed_world`: the real world (the topology in namespaces, site daemons,
  lookupd, knot DNS; needs root);
- :mod:`pcdemo.report`: ``--report DIR`` (pictures beside the JSON).

The example services (``examples/<name>/demo.py``) add their scenarios to the registry.
"""
