"""Crab's weight converter (:data:`.converter.CONVERTER`): one mapping table per component
(``*_table.py``), composed under Crab's prefixes (:mod:`.crab_table`); user files assembled
into one state dict (:mod:`.assemble`) and sized into a config (:mod:`.crab_config`); the
``to-jax`` / ``to-torch`` / ``inspect`` work (:mod:`.to_jax`, :mod:`.to_torch`,
:mod:`.inspection`) and its command-line options (:mod:`.arguments`)."""
